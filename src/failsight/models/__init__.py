"""failsight.models: small torch classifiers and their training / inference helpers (imports torch)."""

from failsight.models.cnn import SmallCNN, TrainingHistory, predict_logits, train_classifier

__all__ = ["SmallCNN", "TrainingHistory", "predict_logits", "train_classifier"]
