"""medcnn.networks."""
