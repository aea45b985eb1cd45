"""Metrics MONAI lacks: the clinical classification report, pixel confusion, error maps."""

from medcnn.metrics.classification import binary_classification_report, confusion_counts
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
    "normalise_confusion_matrix",
    "per_class_scores",
    "pixel_accuracy",
    "pixel_confusion_matrix",
    "segmentation_report",
]
