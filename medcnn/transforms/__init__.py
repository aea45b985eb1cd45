"""medcnn transforms: plain MONAI transforms (array + dictionary versions)."""

from medcnn.transforms.coco import CocoAnnotationError, CocoToMask, CocoToMaskd
from medcnn.transforms.intensity import BrainZScore, BrainZScored
from medcnn.transforms.io import LoadImageChecked, LoadImageCheckedd
from medcnn.transforms.stack import SelectSlice, SelectSliced
from medcnn.transforms.validation import CheckImage, CheckImaged, CheckImageLabeld, InvalidInputError

__all__ = [
    "BrainZScore",
    "BrainZScored",
    "CheckImage",
    "CheckImaged",
    "CheckImageLabeld",
    "CocoAnnotationError",
    "CocoToMask",
    "CocoToMaskd",
    "InvalidInputError",
    "LoadImageChecked",
    "LoadImageCheckedd",
    "SelectSlice",
    "SelectSliced",
]
