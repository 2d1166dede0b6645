"""failsight.models: small torch classifiers and their training / inference helpers (imports torch)."""

from failsight.models.adapters import (
    CallableAdapter,
    ModelAdapter,
    SklearnAdapter,
    TorchAdapter,
    TorchScriptAdapter,
    as_model,
)
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
from failsight.models.loading import load_model, load_state_dict

__all__ = [
    "CallableAdapter",
    "CompositionalHistory",
    "CompositionalNet",
    "ModelAdapter",
    "PretrainHistory",
    "SklearnAdapter",
    "SmallCNN",
    "TorchAdapter",
    "TorchScriptAdapter",
    "TrainingHistory",
    "as_model",
    "compose_logits",
    "compose_predictions",
    "load_model",
    "load_state_dict",
    "predict_heads",
    "predict_logits",
    "pretrain_encoder",
    "train_classifier",
    "train_compositional",
]
