"""Several LoRA adapters on one base VLM in one process (peft multi-adapter), loaded lazily, evicted LRU.

    adapters = LoraSet(base, {"invoices": "runs/inv/best", "letters": "runs/let/best"}, max_loras=2)
    adapters.engine("invoices").recognize(images)   # an OCREngine per adapter; the base weights exist once

An adapter is loaded on its first use (``add_adapter`` + its saved tensors copied in by name: peft's own
loading path drops DeepSeek-OCR-2's language-model LoRA weights, see :mod:`.peft_io`); past ``max_loras``
the least recently used one is deleted. One batch runs at a time on the shared base, with its adapter set
active (a server gives each adapter its own queue, so every batch holds one adapter's requests).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.registry import MODEL_CARD
from deepsynth.models.vlm.base import ADAPTER_DIR, VLMAdapter
from deepsynth.models.vlm.peft_io import ADAPTER_WEIGHTS, copy_adapter_tensors


def adapter_dir(path: str | Path) -> Path:
    """The peft folder of a saved LoRA model directory (or ``path`` itself when it is one)."""
    path = Path(path)
    return path / ADAPTER_DIR if (path / MODEL_CARD).is_file() else path


class LoraSet:
    """Named LoRA adapters over one base :class:`VLMAdapter` (see module docstring)."""

    def __init__(self, base: VLMAdapter, adapters: dict[str, str | Path], *, max_loras: int = 4):
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        if base.has_lora:
            raise ValueError(f"{base.name}: the base model already carries a LoRA adapter (merge it first)")
        self.base = base
        self.max_loras = max_loras
        self.paths: dict[str, Path] = {}
        for name, path in adapters.items():
            self.add(name, path)
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> peft adapter name, LRU first
        self.loads = 0
        self.evictions = 0
        self._lock = threading.Lock()

    def add(self, name: str, path: str | Path) -> None:
        """Register an adapter (checked now, loaded on first use)."""
        folder = adapter_dir(path)
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise FileNotFoundError(f"adapter {name!r}: no {ADAPTER_WEIGHTS} in {folder}")
        card = Path(path) / MODEL_CARD
        if card.is_file():
            family = json.loads(card.read_text()).get("family")
            if family != self.base.family:
                raise ValueError(
                    f"adapter {name!r} ({path}) is for {family!r}, the base is {self.base.family!r}"
                )
        self.paths[name] = folder

    def engine(self, name: str | None) -> LoraEngine:
        """An OCREngine reading with adapter ``name`` (None: the base model alone)."""
        if name is not None and name not in self.paths:
            raise KeyError(f"no adapter {name!r}; known: {', '.join(self.paths)}")
        return LoraEngine(self, name)

    def recognize(
        self, name: str | None, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        with self._lock:
            if name is None:
                if not self.loaded:
                    return self.base.recognize(images, generation)
                with self.base.model.disable_adapter():
                    return self.base.recognize(images, generation)
            self.activate(name)
            return self.base.recognize(images, generation)

    def activate(self, name: str) -> None:
        """Make ``name`` the active adapter (loading it if needed); callers hold the set's lock."""
        peft_name = self._ensure(name)  # may wrap the base model: look up set_adapter afterwards
        self.base.model.set_adapter(peft_name)

    def _ensure(self, name: str) -> str:
        """Load ``name`` if needed (evicting the least recently used beyond ``max_loras``); its peft name."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        from peft import PeftConfig, get_peft_model
        from safetensors.torch import load_file

        folder = self.paths[name]
        peft_name = "ds_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
        config = PeftConfig.from_pretrained(str(folder))
        config.inference_mode = True
        if self.base.has_lora:
            self.base.model.add_adapter(peft_name, config)
        else:
            self.base.model = get_peft_model(self.base.model, config, adapter_name=peft_name)
        copy_adapter_tensors(self.base.model, load_file(str(folder / ADAPTER_WEIGHTS)), peft_name, folder)
        self.base.model.eval()
        self.loaded[name] = peft_name
        self.loads += 1
        while len(self.loaded) > self.max_loras:  # the new one is loaded first: peft always keeps one
            _, old = self.loaded.popitem(last=False)
            self.base.model.delete_adapter(old)
            self.evictions += 1
        return peft_name


class LoraEngine:
    """One adapter of a :class:`LoraSet` as an OCREngine."""

    def __init__(self, adapters: LoraSet, adapter: str | None):
        self.adapters = adapters
        self.adapter = adapter
        self.name = f"{adapters.base.name}+{adapter}" if adapter else adapters.base.name

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        return self.adapters.recognize(self.adapter, images, generation)
