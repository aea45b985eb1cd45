"""medcnn.transforms."""
