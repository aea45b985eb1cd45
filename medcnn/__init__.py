"""medcnn: a MONAI plugin for medical image analysis with convolutional networks.

Weakly supervised Grad-CAM localisation, segmentation and classification, packaged as MONAI bundles.
"""

__version__ = "0.1.0"

from medcnn import errors  # noqa: E402  (stdlib only: bundles call medcnn.errors.install_error_handler())

__all__ = ["__version__", "engines", "errors"]


def __getattr__(name: str):
    """``medcnn.engines`` on first use (bundle configs call ``medcnn.engines.run_trainer`` after ``import medcnn``)
    without importing MONAI for users who only need the stdlib parts."""
    if name == "engines":
        import importlib

        return importlib.import_module("medcnn.engines")
    raise AttributeError(f"module 'medcnn' has no attribute {name!r}")
