"""medcnn.networks."""

from medcnn.networks.adaptation import adapt_batch_norm
from medcnn.networks.autocast import AUTOCAST_DTYPES, autocast_disabled, autocast_dtype, autocast_forward
from medcnn.networks.classic_cnn import ClassicCNN, small_image_classifier
from medcnn.networks.domain_adversarial import (
    DomainAdversarialClassifier,
    DomainAdversarialLoss,
    DomainBatch,
    GradientReversal,
    tcga_site,
)
from medcnn.networks.ensemble import ClassifierEnsemble, assemble_ensemble, checkpoint_members, ensemble_or_member
from medcnn.networks.gate import BrainFractionGate, brain_fraction, slice_classifier
from medcnn.networks.resnet_classifier import ResNetClassifier
from medcnn.networks.segmentation import (
    SEGMENTATION_NETWORKS,
    SEGMENTATION_NETWORKS_3D,
    DihedralEnsembleInferer,
    FlipEnsembleInferer,
    build_segmentation_network,
    deep_supervision_loss,
    segmentation_divisor,
)
from medcnn.networks.slice_scoring import SliceBatchError, SliceScoreInferer, neighbour_mean
from medcnn.networks.weights import CheckpointError, load_pretrained, load_weights

__all__ = [
    "adapt_batch_norm",
    "AUTOCAST_DTYPES",
    "autocast_forward",
    "autocast_dtype",
    "autocast_disabled",
    "BrainFractionGate",
    "brain_fraction",
    "slice_classifier",
    "CheckpointError",
    "load_weights",
    "load_pretrained",
    "ClassicCNN",
    "small_image_classifier",
    "ResNetClassifier",
    "DomainAdversarialClassifier",
    "DomainAdversarialLoss",
    "DomainBatch",
    "GradientReversal",
    "tcga_site",
    "ClassifierEnsemble",
    "ensemble_or_member",
    "assemble_ensemble",
    "checkpoint_members",
    "SEGMENTATION_NETWORKS",
    "SEGMENTATION_NETWORKS_3D",
    "FlipEnsembleInferer",
    "SliceScoreInferer",
    "SliceBatchError",
    "neighbour_mean",
    "DihedralEnsembleInferer",
    "build_segmentation_network",
    "deep_supervision_loss",
    "segmentation_divisor",
]
