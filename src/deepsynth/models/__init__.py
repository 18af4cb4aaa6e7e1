"""Model families (one adapter each behind :class:`ModelAdapter`) and non-trainable baseline engines."""

from deepsynth.models.base import ModelAdapter, OCREngine, Prediction
from deepsynth.models.generation import GenerationConfig

__all__ = ["GenerationConfig", "ModelAdapter", "OCREngine", "Prediction"]
