"""deepsynth.training: one training loop for every model family (see trainer.py); configs in config.py."""

from deepsynth.training.config import LoraSettings, TrainConfig

__all__ = ["LoraSettings", "TrainConfig"]
