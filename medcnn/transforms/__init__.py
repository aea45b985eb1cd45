"""medcnn transforms: plain MONAI transforms (array + dictionary versions)."""

from medcnn.transforms.coco import CocoAnnotationError, CocoToMask, CocoToMaskd
from medcnn.transforms.io import LoadImageChecked, LoadImageCheckedd
from medcnn.transforms.validation import CheckImage, CheckImaged, CheckImageLabeld, InvalidInputError

__all__ = [
    "LoadImageChecked",
    "LoadImageCheckedd",
    "CheckImage",
    "CheckImaged",
    "CheckImageLabeld",
    "InvalidInputError",
]
__all__ += ["CocoAnnotationError", "CocoToMask", "CocoToMaskd"]
