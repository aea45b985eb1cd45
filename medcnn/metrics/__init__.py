"""Metrics MONAI lacks: the clinical classification report, pixel confusion, error maps."""

from medcnn.metrics.classification import binary_classification_report, confusion_counts

__all__ = ["binary_classification_report", "confusion_counts"]
