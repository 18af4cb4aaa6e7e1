"""The two contracts every model in DeepSynth implements.

* :class:`OCREngine` reads images into text. Baselines (RapidOCR, Tesseract), trained models and remote
  servers all implement it; the evaluation harness and the inference service only know this protocol.
* :class:`ModelAdapter` is the base class of every trainable engine: it turns samples into a batch, computes
  a loss, saves/loads itself and declares the trainer's hooks with no-op defaults. The trainer is typed with it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image

from deepsynth.models.generation import GenerationConfig

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch

    from deepsynth.data.sample import Sample


@dataclass
class TokenLogprob:
    """One output token (a CTC recogniser's character) with its log-probability and, when asked and the
    engine has them, the most likely tokens at its step with theirs (best first)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Prediction:
    """What an engine read from one image.

    ``finished`` is False when a generative engine stopped at its length limit without an end token
    (None when the engine cannot tell). ``lines`` holds per-line results in page mode.

    Token counts (the API's ``usage``): ``num_tokens`` is what the engine generated — a VLM's tokens without
    the end token, a CTC recogniser's characters (labels left after collapsing repeats and blanks);
    ``prompt_tokens`` is what it read — a VLM's image + prompt tokens, 0 for a CTC recogniser (no prompt).
    ``logprobs`` (only when ``GenerationConfig.top_logprobs`` is set and the engine has token probabilities)
    holds one entry per counted output token.
    """

    text: str
    confidence: float | None = None
    finished: bool | None = None
    num_tokens: int | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int | None = None
    logprobs: list[TokenLogprob] | None = None


def char_tokens(text: str) -> int:
    """Output tokens of a non-generative (CTC) engine: its characters, line breaks between lines not counted."""
    return len(text) - text.count("\n")


@runtime_checkable
class OCREngine(Protocol):
    """Anything that reads images into text."""

    name: str

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read a batch of RGB images; one Prediction per image, in order."""
        ...


TextSink = Callable[[str], None]  # receives the pieces of a streamed text, in order
StopCheck = Callable[[], bool]  # polled while generating: True ends the generation early


@runtime_checkable
class StreamingEngine(OCREngine, Protocol):
    """An engine that hands out the text of one image while it generates it (the generative VLMs).

    CTC recognisers and page engines do not implement it: their text exists only once the image is read.
    """

    def recognize_stream(
        self,
        image: Image.Image,
        generation: GenerationConfig | None,
        emit: TextSink,
        stop: StopCheck | None = None,
    ) -> Prediction:
        """Read one image, calling ``emit`` with pieces of its text as they are generated. The pieces joined
        are a prefix of the returned text (the caller sends the rest). ``stop()`` returning True ends the
        generation early (the prediction then has ``finished=False``)."""
        ...


class ModelAdapter(ABC):
    """A trainable OCR model family behind one small interface; the trainer knows nothing else.

    Subclasses implement the abstract methods. The training hooks have no-op defaults that a family
    overrides when it needs them (PP-OCR grows its charset and keeps BatchNorm frozen; VLMs prepare k-bit
    weights and move with their quantisation in mind). Families without LoRA keep :meth:`apply_lora`, which
    raises a TypeError.
    """

    name: str
    family: str = ""
    model: torch.nn.Module

    @abstractmethod
    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read a batch of RGB images; one Prediction per image, in order."""

    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Turn samples into a model batch (tensors). Raises SampleError naming a sample it cannot use."""

    @abstractmethod
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scalar training loss for a batch produced by :meth:`collate`."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Write everything :meth:`load` needs to ``path`` (a directory)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, **kwargs: Any) -> ModelAdapter:
        """Load a saved model (local directory or hub id)."""

    # ------------------------------------------------------------------ training hooks (no-op defaults)
    def extend_charset(self, texts: Iterable[str]) -> list[str]:
        """Make every character of ``texts`` learnable; returns the characters added (none by default)."""
        return []

    def prune_charset(self, texts: Iterable[str]) -> int:
        """Drop output classes of scripts ``texts`` never use; returns how many (none by default)."""
        return 0

    def fit_lm_decoder(
        self,
        texts: Sequence[str],
        val_images: Sequence[Image.Image],
        score: Callable[[list[str]], float],
        settings: Any,
        save_to: str | Path | None = None,
    ) -> dict[str, Any] | None:
        """Fit a language model to read with on ``texts``; choose its weights by ``score(val_hyps)`` (lower is
        better) on ``val_images``, and write the choice into the model directory ``save_to``. Returns what was
        tried and chosen, or None when the family reads without one (the default)."""
        return None

    def prepare_for_training(self, cfg: Any = None) -> None:
        """Last preparation before the optimizer is built (k-bit preparation, gradient checkpointing)."""
        return None

    def apply_lora(self, settings: Any) -> None:
        """Wrap the model with LoRA adapters per ``settings`` (families without LoRA raise a TypeError)."""
        raise TypeError(f"model family {self.family or type(self).__name__!r} does not support LoRA")

    def train_mode(self) -> None:
        """Put the model in training mode (families override to keep parts frozen, e.g. BatchNorm)."""
        self.model.train()

    def to(self, device: Any) -> ModelAdapter:
        """Move the model to ``device``; returns self."""
        self.model.to(device)
        return self
