"""The serving-engine protocol: what the service and the server need from the engine they run.

Any :class:`~deepsynth.models.base.OCREngine` reads images; serving also needs to know whether the engine is
still usable, whether it queues work itself, which process runs it, its GPU memory, its LoRA adapters (a
VLM base serving several, each image naming its own) and how to stop it. A
:class:`~deepsynth.inference.model_process.ProcessEngine` implements this itself; every other engine runs in
the server's process and is wrapped in :class:`InProcessEngine`. Callers type against :class:`ServingEngine`
instead of probing engines with ``getattr``.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from deepsynth.models.base import OCREngine, Prediction, StopCheck, StreamingEngine, TextSink
from deepsynth.models.generation import GenerationConfig

if TYPE_CHECKING:
    from deepsynth.models.vlm.multi_lora import LoraSet

GpuReading = tuple[str, str, float]  # (device, kind, bytes)
Adapters = Sequence[str | None] | None  # the LoRA adapter of each image (None: the base alone)


class NoAdapters(ValueError):
    """The engine serves no LoRA adapters (its model is not a LoRA base)."""


class ServingEngine(abc.ABC):
    """An OCR engine as the server runs it."""

    name: str
    #: True when ``recognize`` may be called again while a batch runs (the engine queues batches itself)
    pipelined: bool = False
    #: True when :meth:`recognize_stream` hands out text while it is generated (generative VLMs)
    streams: bool = False

    @abc.abstractmethod
    def recognize(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        adapters: Adapters = None,
    ) -> list[Prediction]:
        """Read a batch of RGB images; one Prediction per image, in order; ``adapters``: each image's LoRA
        adapter (only for an engine that :attr:`serves_adapters`)."""

    @property
    def serves_adapters(self) -> bool:
        """True when the model is a LoRA base: adapters are added, removed and named per image."""
        return False

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Register LoRA adapter ``name`` saved in ``path`` (checked now, loaded on first use); a name
        registered again is replaced."""
        raise NoAdapters(f"model {self.name!r} serves no LoRA adapters")

    def remove_adapter(self, name: str) -> None:
        """Forget adapter ``name`` and free its weights."""
        raise NoAdapters(f"model {self.name!r} serves no LoRA adapters")

    def recognize_stream(
        self,
        image: Image.Image,
        generation: GenerationConfig | None,
        emit: TextSink,
        stop: StopCheck | None = None,
        adapter: str | None = None,
    ) -> Prediction:
        """Read one image (with LoRA ``adapter``), calling ``emit`` with pieces of its text while it is
        generated (see :class:`~deepsynth.models.base.StreamingEngine`). An engine that cannot stream emits
        nothing: its caller sends the whole text once the prediction is back."""
        (pred,) = self.recognize([image], generation, None if adapter is None else [adapter])
        return pred

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
        self.lora = lora_set(engine)
        self.streams = isinstance(engine, StreamingEngine)  # a LoRA set streams through its adapters
        self._closed = False

    def recognize(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        adapters: Adapters = None,
    ) -> list[Prediction]:
        if self.lora is not None:
            return self.lora.recognize(images, generation, adapters)
        if adapters is not None and any(a is not None for a in adapters):
            raise NoAdapters(f"model {self.name!r} serves no LoRA adapters")
        return self.engine.recognize(images, generation)

    def recognize_stream(
        self,
        image: Image.Image,
        generation: GenerationConfig | None,
        emit: TextSink,
        stop: StopCheck | None = None,
        adapter: str | None = None,
    ) -> Prediction:
        if self.lora is not None:
            return self.lora.recognize_stream(image, generation, emit, stop, adapter)
        if self.streams and adapter is None and isinstance(self.engine, StreamingEngine):
            return self.engine.recognize_stream(image, generation, emit, stop)
        return super().recognize_stream(image, generation, emit, stop, adapter)

    @property
    def serves_adapters(self) -> bool:
        return self.lora is not None

    def add_adapter(self, name: str, path: str | Path) -> None:
        if self.lora is None:
            return super().add_adapter(name, path)
        self.lora.add(name, path)

    def remove_adapter(self, name: str) -> None:
        if self.lora is None:
            return super().remove_adapter(name)
        self.lora.remove(name)

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


def lora_set(engine: object) -> LoraSet | None:
    """``engine`` when it is a :class:`~deepsynth.models.vlm.multi_lora.LoraSet`, else None (the module is
    not imported for engines that cannot be one)."""
    module = sys.modules.get("deepsynth.models.vlm.multi_lora")
    return engine if module is not None and isinstance(engine, module.LoraSet) else None


def as_serving_engine(engine: OCREngine | ServingEngine) -> ServingEngine:
    """``engine`` itself when it is a ServingEngine, else wrapped to run in this process."""
    return engine if isinstance(engine, ServingEngine) else InProcessEngine(engine)
