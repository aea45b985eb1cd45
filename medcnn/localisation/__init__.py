"""Weakly supervised localisation: CAM method -> heatmap -> threshold -> mask -> Dice.

Public API:

- :func:`localise` (``model, images, method, target_layer, class_idx`` -> heatmaps ``(B, 1, *S)`` in [0, 1]),
- :func:`cam_to_mask` (heatmaps -> binary masks: fraction of max or Otsu, optional largest component),
- :class:`CAMRule` (the one typed rule: method, layer, class, threshold + mode, largest component, decision
  threshold) and :class:`CAMToMask` / :class:`CAMToMaskd` (the post-processing transform applying it),
- :func:`cam_dice` (per-image Dice with MONAI's ``DiceMetric``),
- :func:`select_threshold` / :func:`calibrate_cam` (threshold rule chosen on validation data),
- :func:`evaluate_cam` (CAM Dice of a labelled dataset),
- :data:`CAM_METHODS`, :func:`available_cam_methods`, :func:`get_cam_method`, :class:`CAMMethod` (methods from
  MONAI and the grad-cam package behind one interface).

The Ignite handler that computes CAM Dice during an evaluation is :class:`medcnn.handlers.cam.CAMDiceHandler`.
"""

from medcnn.localisation.masks import (
    MASK_MODES,
    THRESHOLD_MODES,
    cam_dice,
    cam_to_mask,
    resize_heatmaps,
    select_threshold,
)
from medcnn.localisation.methods import (
    CAM_METHODS,
    CAMMethod,
    GradCAMPackageCAM,
    MonaiCAM,
    UnsupportedCAMError,
    available_cam_methods,
    get_cam_method,
    resolve_target_layer,
)
from medcnn.localisation.pipeline import calibrate_cam, evaluate_cam, localise, localise_items, mask_rule
from medcnn.localisation.rule import CAMRule, CAMToMask, CAMToMaskd, class_present

__all__ = [
    "CAM_METHODS", "CAMMethod", "CAMRule", "CAMToMask", "CAMToMaskd", "GradCAMPackageCAM", "MonaiCAM",
    "MASK_MODES", "THRESHOLD_MODES", "UnsupportedCAMError", "class_present",
    "available_cam_methods", "calibrate_cam", "cam_dice", "cam_to_mask", "evaluate_cam", "get_cam_method",
    "localise", "localise_items", "mask_rule", "resize_heatmaps", "resolve_target_layer", "select_threshold",
]
