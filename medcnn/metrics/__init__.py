"""Metrics MONAI lacks: clinical classification report, pixel confusion, error maps, ISBI 2012 V_rand / V_info."""

from medcnn.metrics.classification import binary_classification_report, confusion_counts
from medcnn.metrics.rand import best_rand_info, foreground_restricted_scores, rand_info_sweep, thin_boundaries
from medcnn.metrics.segmentation import (
    adapted_rand_error_2d,
    normalise_confusion_matrix,
    per_class_scores,
    pixel_accuracy,
    pixel_confusion_matrix,
    segmentation_report,
)

__all__ = [
    "binary_classification_report",
    "confusion_counts",
    "adapted_rand_error_2d",
    "best_rand_info",
    "foreground_restricted_scores",
    "rand_info_sweep",
    "thin_boundaries",
    "normalise_confusion_matrix",
    "per_class_scores",
    "pixel_accuracy",
    "pixel_confusion_matrix",
    "segmentation_report",
]
