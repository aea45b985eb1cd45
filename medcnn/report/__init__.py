"""medcnn.report."""
