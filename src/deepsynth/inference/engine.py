"""The serving-engine protocol: what the service and the server need from the engine they run.

Any :class:`~deepsynth.models.base.OCREngine` reads images; serving also needs to know whether the engine is
still usable, whether it queues work itself, which process runs it, its GPU memory and how to stop it. A
:class:`~deepsynth.inference.model_process.ProcessEngine` implements this itself; every other engine runs in
the server's process and is wrapped in :class:`InProcessEngine`. Callers type against :class:`ServingEngine`
instead of probing engines with ``getattr``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from PIL import Image

from deepsynth.models.base import OCREngine, Prediction
from deepsynth.models.generation import GenerationConfig

GpuReading = tuple[str, str, float]  # (device, kind, bytes)


class ServingEngine(abc.ABC):
    """An OCR engine as the server runs it."""

    name: str
    #: True when ``recognize`` may be called again while a batch runs (the engine queues batches itself)
    pipelined: bool = False

    @abc.abstractmethod
    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read a batch of RGB images; one Prediction per image, in order."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the engine can no longer answer (its process died or it was closed)."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The process running the model when it is not this one, else None."""

    @abc.abstractmethod
    def gpu_memory(self) -> list[GpuReading]:
        """CUDA memory held by the engine's own process ([] when it runs here or on CPU)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine (idempotent)."""


class InProcessEngine(ServingEngine):
    """Any OCREngine run in the server's own process (always alive, not pipelined, no process of its own)."""

    def __init__(self, engine: OCREngine):
        self.engine = engine
        self.name = engine.name
        self._closed = False

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        return self.engine.recognize(images, generation)

    @property
    def alive(self) -> bool:
        return True  # it runs in this process: if this process is gone, nobody asks

    @property
    def pid(self) -> int | None:
        return None

    def gpu_memory(self) -> list[GpuReading]:
        return []  # this process's own CUDA memory is exported by the server's metrics directly

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self.engine, "close", None)  # OCREngine declares no close; some engines have one
        if callable(close):
            close()


def as_serving_engine(engine: OCREngine | ServingEngine) -> ServingEngine:
    """``engine`` itself when it is a ServingEngine, else wrapped to run in this process."""
    return engine if isinstance(engine, ServingEngine) else InProcessEngine(engine)
