"""medcnn: a MONAI plugin for medical image analysis with convolutional networks.

Weakly supervised Grad-CAM localisation, segmentation and classification, packaged as MONAI bundles.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
