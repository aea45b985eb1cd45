"""medcnn.localisation."""
