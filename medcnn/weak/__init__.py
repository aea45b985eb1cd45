"""Weak labels -> a trained segmenter: classifier + CAM rule -> pseudo-masks (with provenance) -> refinement ->
training data for a segmentation network, from image-level labels only.

- :class:`PseudoMaskGenerator` / :func:`compute_pseudo_masks`: pseudo-masks of a training set
  (:mod:`medcnn.weak.pseudo`),
- :class:`PseudoMaskRefiner`, :class:`DenseCRF`, :class:`IgnoreBand`, :func:`refine`: refinement steps
  (:mod:`medcnn.weak.refine`),
- :func:`select_refinement` / :func:`pseudo_mask_quality`: choose the refinement on validation data
  (:mod:`medcnn.weak.select`),
- :func:`pseudo_mask_datalist`: the ``"training"`` list of a pseudo-mask folder, for a segmentation bundle.

A second round (self-training) is the same generator with ``heatmap="segmenter"``: the segmenter of the first
round makes the next pseudo-masks (its softmax probability, thresholded with a ``mode="probability"`` rule).

The segmenter trains with :class:`medcnn.losses.PixelWeightedDiceCELoss` (``mask_dice=True``), which ignores the
pixels of weight 0.
"""

from medcnn.weak.pseudo import (
    HEATMAP_SOURCES,
    PROVENANCE_FILE,
    PseudoMaskGenerator,
    compute_pseudo_masks,
    file_sha256,
    image_level_items,
    load_classifier,
    previous_round_segmenter,
    pseudo_mask_datalist,
)
from medcnn.weak.refine import REFINERS, DenseCRF, IgnoreBand, PseudoMaskRefiner, build_refiners, refine
from medcnn.weak.select import pseudo_mask_quality, select_refinement

__all__ = [
    "HEATMAP_SOURCES", "PROVENANCE_FILE", "REFINERS", "DenseCRF", "IgnoreBand", "PseudoMaskGenerator",
    "PseudoMaskRefiner",
    "build_refiners", "compute_pseudo_masks", "file_sha256", "image_level_items", "load_classifier",
    "previous_round_segmenter", "pseudo_mask_datalist", "pseudo_mask_quality", "refine", "select_refinement",
]
