"""medcnn transforms: plain MONAI transforms (array + dictionary versions)."""

from medcnn.transforms.coco import CocoAnnotationError, CocoToMask, CocoToMaskd, MaskToBoxes, MaskToBoxesd
from medcnn.transforms.colour import ToGrey, ToGreyd
from medcnn.transforms.compose import PlainTailCompose
from medcnn.transforms.instances import MembraneToInstances, MembraneToInstancesd, membrane_to_instances
from medcnn.transforms.intensity import BrainZScore, BrainZScored, HeadMask, HeadMaskd
from medcnn.transforms.io import LoadImageChecked, LoadImageCheckedd
from medcnn.transforms.mask import BinaryMask, BinaryMaskd, MaskPresence, MaskPresenced
from medcnn.transforms.resize import ResizeToMatchd
from medcnn.transforms.slices import (
    HemisphereStack,
    HemisphereStackd,
    KeepSlices,
    RandSliceByPosNegd,
    SelectSlicesd,
    SliceBlocks,
    SliceBlocksd,
    SliceIterd,
    brain_slice_indices,
    slice_block_indices,
    unambiguous_slice_indices,
)
from medcnn.transforms.stack import LoadNeighbourSlicesd, SelectSlice, SelectSliced, StackSlices
from medcnn.transforms.validation import CheckImage, CheckImaged, CheckImageLabeld, InvalidInputError
from medcnn.transforms.weights import BorderWeightMap, BorderWeightMapd, border_weight_map

__all__ = [
    "BinaryMask",
    "BinaryMaskd",
    "MaskPresence",
    "MaskPresenced",
    "ResizeToMatchd",
    "BorderWeightMap",
    "BorderWeightMapd",
    "border_weight_map",
    "BrainZScore",
    "BrainZScored",
    "HeadMask",
    "HeadMaskd",
    "CheckImage",
    "CheckImaged",
    "CheckImageLabeld",
    "CocoAnnotationError",
    "CocoToMask",
    "CocoToMaskd",
    "InvalidInputError",
    "LoadImageChecked",
    "LoadImageCheckedd",
    "MaskToBoxes",
    "MaskToBoxesd",
    "MembraneToInstances",
    "MembraneToInstancesd",
    "membrane_to_instances",
    "PlainTailCompose",
    "LoadNeighbourSlicesd",
    "SelectSlice",
    "SelectSliced",
    "StackSlices",
    "HemisphereStack",
    "HemisphereStackd",
    "KeepSlices",
    "RandSliceByPosNegd",
    "SelectSlicesd",
    "SliceIterd",
    "brain_slice_indices",
    "unambiguous_slice_indices",
    "SliceBlocks",
    "SliceBlocksd",
    "slice_block_indices",
    "ToGrey",
    "ToGreyd",
]
