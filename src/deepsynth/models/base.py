"""The two small protocols every model in DeepSynth implements.

* :class:`OCREngine` reads images into text. Baselines (RapidOCR, Tesseract), trained models and remote
  servers all implement it; the evaluation harness and the inference service only know this protocol.
* :class:`ModelAdapter` is an OCREngine that can also be trained: it turns samples into a batch, computes a
  loss, and saves/loads itself. The trainer knows nothing family-specific beyond this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image

from deepsynth.models.generation import GenerationConfig

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch

    from deepsynth.data.sample import Sample


@dataclass
class Prediction:
    """What an engine read from one image.

    ``finished`` is False when a generative engine stopped at its length limit without an end token
    (None when the engine cannot tell). ``lines`` holds per-line results in page mode.
    """

    text: str
    confidence: float | None = None
    finished: bool | None = None
    num_tokens: int | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class OCREngine(Protocol):
    """Anything that reads images into text."""

    name: str

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read a batch of RGB images; one Prediction per image, in order."""
        ...


@runtime_checkable
class ModelAdapter(OCREngine, Protocol):
    """A trainable OCR model family behind one small interface (see deepsynth.training.trainer)."""

    model: torch.nn.Module

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Turn samples into a model batch (tensors). Raises SampleError naming a sample it cannot use."""
        ...

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scalar training loss for a batch produced by :meth:`collate`."""
        ...

    def save(self, path: str | Path) -> None:
        """Write everything :meth:`load` needs to ``path`` (a directory)."""
        ...

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> ModelAdapter:
        """Load a saved model (local directory or hub id)."""
        ...
