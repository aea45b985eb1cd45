"""medcnn: a MONAI plugin for medical image analysis with convolutional networks.

Weakly supervised Grad-CAM localisation, segmentation and classification, packaged as MONAI bundles.
"""

__version__ = "0.1.0"

from medcnn import errors  # noqa: E402  (stdlib only: bundles call medcnn.errors.install_error_handler())

__all__ = ["__version__", "errors"]
