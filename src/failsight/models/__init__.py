"""failsight.models: small torch classifiers and their training / inference helpers (imports torch)."""

from failsight.models.cnn import SmallCNN, TrainingHistory, predict_logits, train_classifier
from failsight.models.compositional import (
    CompositionalHistory,
    CompositionalNet,
    PretrainHistory,
    compose_logits,
    compose_predictions,
    predict_heads,
    pretrain_encoder,
    train_compositional,
)

__all__ = [
    "CompositionalHistory",
    "CompositionalNet",
    "PretrainHistory",
    "SmallCNN",
    "TrainingHistory",
    "compose_logits",
    "compose_predictions",
    "predict_heads",
    "predict_logits",
    "pretrain_encoder",
    "train_classifier",
    "train_compositional",
]
