"""medcnn transforms: plain MONAI transforms (array + dictionary versions)."""

from medcnn.transforms.validation import CheckImage, CheckImaged, CheckImageLabeld, InvalidInputError

__all__ = ["CheckImage", "CheckImaged", "CheckImageLabeld", "InvalidInputError"]
