"""medcnn: a MONAI plugin for medical image analysis with convolutional networks.

Weakly supervised Grad-CAM localisation, segmentation and classification, packaged as MONAI bundles.
"""

__version__ = "0.1.0"

# stdlib only: bundles call medcnn.errors.install_error_handler() and read their bool ids through medcnn.config.flag
from medcnn import config, errors  # noqa: E402

__all__ = ["__version__", "config", "errors"]
