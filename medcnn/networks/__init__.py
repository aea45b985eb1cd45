"""medcnn.networks."""

from medcnn.networks.resnet_classifier import ResNetClassifier

__all__ = ["ResNetClassifier"]
