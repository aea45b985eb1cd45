"""Ignite handlers that medcnn bundles wire into MONAI workflows."""

from medcnn.handlers.cam import CAMDiceHandler
from medcnn.handlers.checkpoint import (
    CheckpointLoader,
    CheckpointSaver,
    TrainingCheckpoint,
    TrainingCheckpointError,
)
from medcnn.handlers.classification import ClassificationReport
from medcnn.handlers.curves import TrainingCurvesHandler
from medcnn.handlers.metrics_json import MetricsJSONWriter, write_metrics_json
from medcnn.handlers.report import PDFReportHandler
from medcnn.handlers.segmentation import (
    EmptyReferenceCount,
    HausdorffDistance,
    MeanDice,
    PixelConfusionMetric,
    SegmentationFiguresHandler,
    StackPredictionWriter,
)

__all__ = [
    "CAMDiceHandler",
    "CheckpointLoader",
    "CheckpointSaver",
    "ClassificationReport",
    "EmptyReferenceCount",
    "HausdorffDistance",
    "MeanDice",
    "MetricsJSONWriter",
    "PDFReportHandler",
    "PixelConfusionMetric",
    "SegmentationFiguresHandler",
    "StackPredictionWriter",
    "TrainingCheckpoint",
    "TrainingCheckpointError",
    "TrainingCurvesHandler",
    "write_metrics_json",
]
