"""Several LoRA adapters on one base VLM in one process (peft multi-adapter), loaded lazily, evicted LRU,
mixed in one batch.

    adapters = LoraSet(base, {"invoices": "runs/inv/best", "letters": "runs/let/best"}, max_loras=2)
    adapters.recognize(images, gen, ["invoices", None, "letters"])  # one generate(); None: the base alone
    adapters.engine("invoices").recognize(images)   # an OCREngine per adapter; the base weights exist once

An adapter is loaded on its first use (``add_adapter`` + its saved tensors copied in by name: peft's own
loading path drops DeepSeek-OCR-2's language-model LoRA weights, see :mod:`.peft_io`); past ``max_loras``
the least recently used one is deleted.

A batch may mix adapters (and the base): every row runs in one ``generate`` (as vLLM's multi-LoRA batches
do), so a load spread over several adapters keeps the batch size of one adapter. During that call each LoRA
layer gathers its rows' A and B matrices once (zeros for a base row) and applies them to the whole batch in
two batched matmuls, as vLLM's Punica kernels do: its cost does not grow with the number of adapters, unlike
peft's per-row ``adapter_names``, which runs one sub-batch per adapter in every layer (0.60× the throughput
of one adapter for 4 adapters on the tiny model, against 1.0× gathered). That works for plain LoRA placed only
in modules that see one row per image (``VLMAdapter.mixed_batch_modules``: the language model); while an
adapter that also sits in a vision tower (which regroups rows into tiles and windows) is loaded, each
adapter's rows run in a call of their own with that adapter active. A batch with more distinct adapters
than ``max_loras`` runs in several calls of at most ``max_loras`` adapters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import types
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from deepsynth.models.base import OCREngine, Prediction, StopCheck, TextSink
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.registry import MODEL_CARD
from deepsynth.models.vlm.base import ADAPTER_DIR, VLMAdapter
from deepsynth.models.vlm.peft_io import ADAPTER_WEIGHTS, copy_adapter_tensors

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's adapter name for "no adapter" in a mixed batch


def adapter_dir(path: str | Path) -> Path:
    """The peft folder of a saved LoRA model directory (or ``path`` itself when it is one)."""
    path = Path(path)
    return path / ADAPTER_DIR if (path / MODEL_CARD).is_file() else path


class LoraSet:
    """Named LoRA adapters over one base :class:`VLMAdapter` (see module docstring); an OCREngine whose
    ``recognize`` takes each image's adapter."""

    def __init__(self, base: VLMAdapter, adapters: dict[str, str | Path], *, max_loras: int = 4):
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        if base.has_lora:
            raise ValueError(f"{base.name}: the base model already carries a LoRA adapter (merge it first)")
        self.base = base
        self.name = base.name
        self.max_loras = max_loras
        self.paths: dict[str, Path] = {}
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> peft adapter name, LRU first
        self.mixable: dict[str, bool] = {}  # loaded adapter -> may share a generate() with other adapters
        self.loads = 0
        self.evictions = 0
        self._lock = threading.Lock()
        for name, path in adapters.items():
            self.add(name, path)

    @classmethod
    def over(cls, base: OCREngine, adapters: dict[str, str | Path], max_loras: int = 4) -> LoraSet:
        """The adapters over ``base``, which must be a VLM without an adapter of its own (ValueError)."""
        if not isinstance(base, VLMAdapter):
            raise ValueError(f"LoRA adapters need a VLM as their base; {base.name} is not one")
        try:
            return cls(base, adapters, max_loras=max_loras)
        except (OSError, KeyError) as exc:
            raise ValueError(str(exc)) from exc

    def add(self, name: str, path: str | Path) -> None:
        """Register an adapter (checked now, loaded on first use); registering a name again replaces it
        (its old weights are dropped at once)."""
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
        if name in self.paths:
            self.remove(name)
        self.paths[name] = folder

    def remove(self, name: str) -> None:
        """Forget adapter ``name`` and free its weights (KeyError naming the known ones if unknown)."""
        self._check(name)
        with self._lock:
            del self.paths[name]
            if name in self.loaded:
                self._evict(name)

    def engine(self, name: str | None) -> LoraEngine:
        """An OCREngine reading with adapter ``name`` (None: the base model alone)."""
        if name is not None:
            self._check(name)
        return LoraEngine(self, name)

    def _check(self, name: str) -> None:
        if name not in self.paths:
            raise KeyError(f"no adapter {name!r}; known: {', '.join(self.paths) or 'none'}")

    def recognize(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Read ``images``, each with its adapter (``adapters[i]``; None or no list: the base alone), in as
        few ``generate`` calls as the adapters allow (one when they all may mix)."""
        names = list(adapters) if adapters is not None else [None] * len(images)
        if len(names) != len(images):
            raise ValueError(f"{len(names)} adapter names for {len(images)} images")
        for name in {n for n in names if n is not None}:
            self._check(name)
        out: list[Prediction | None] = [None] * len(images)
        with self._lock:
            for rows, adapter_names in self._calls(names):
                preds = self._run([images[i] for i in rows], generation, adapter_names)
                for i, p in zip(rows, preds, strict=True):
                    p.meta["adapter"] = names[i]
                    out[i] = p
        return out  # type: ignore[return-value]

    def _calls(self, names: list[str | None]) -> Iterator[tuple[list[int], list[str] | str | None]]:
        """(rows, what to run them with) per ``generate`` call: per-row peft names for a mixed call, one
        adapter's name for a call with it active, None for the base alone. Loads adapters as it goes."""
        distinct = list(dict.fromkeys(n for n in names if n is not None))
        base_rows = [i for i, n in enumerate(names) if n is None]
        for start in range(0, len(distinct), self.max_loras):
            chunk = distinct[start : start + self.max_loras]
            peft = {n: self._ensure(n) for n in chunk}  # at most max_loras: none of them is evicted
            # peft hands the row names to every LoRA layer, so one loaded adapter outside the per-row
            # modules (a vision tower) stops every mixed call while it is loaded
            if all(self.mixable.values()):
                rows = sorted([i for i, n in enumerate(names) if n in peft] + base_rows)
                base_rows = []  # the base rows ride along with the first mixed call
                yield rows, [peft[names[i]] if names[i] is not None else BASE for i in rows]
                continue
            for n in chunk:
                yield [i for i, m in enumerate(names) if m == n], peft[n]
        if base_rows:
            yield base_rows, None

    def recognize_stream(
        self,
        image: Image.Image,
        generation: GenerationConfig | None,
        emit: TextSink,
        stop: StopCheck | None = None,
        adapter: str | None = None,
    ) -> Prediction:
        """Read one image with ``adapter`` (None: the base alone), emitting pieces of its text as they are
        generated (:class:`~deepsynth.models.base.StreamingEngine`)."""
        if adapter is not None:
            self._check(adapter)
        with self._lock:
            ((_, how),) = self._calls([adapter])
            with self._using(how):
                pred = self.base.recognize_stream(image, generation, emit, stop)
        pred.meta["adapter"] = adapter
        return pred

    def _run(
        self, images: list[Image.Image], gen: GenerationConfig | None, how: list[str] | str | None
    ) -> list[Prediction]:
        with self._using(how):
            return self.base.recognize(images, gen)

    @contextlib.contextmanager
    def _using(self, how: list[str] | str | None) -> Iterator[None]:
        """The base model reads with ``how`` (see :meth:`_calls`) inside the block."""
        if how is None:  # the base alone
            with self.base.model.disable_adapter() if self.loaded else contextlib.nullcontext():
                yield
        elif isinstance(how, str):  # one adapter active (it cannot share a batch)
            self.base.model.set_adapter(how)
            yield
        else:
            with _gathered(self.base.model, how):
                yield

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
        self.mixable[name] = _mixable(self.base.model, peft_name, config, self.base.mixed_batch_modules)
        if not self.mixable[name]:
            log.info("LoRA adapter %s sits outside %s: its rows run in calls of their own", name,
                     self.base.mixed_batch_modules)  # fmt: skip
        self.loads += 1
        while len(self.loaded) > self.max_loras:  # the new one is loaded first: peft always keeps one
            self._evict(next(iter(self.loaded)))
        return peft_name

    def _evict(self, name: str) -> None:
        old = self.loaded.pop(name)
        self.mixable.pop(name, None)
        if self.loaded:
            self.base.model.delete_adapter(old)
        else:  # peft keeps at least one adapter: unwrap instead (the base's own modules come back)
            self.base.model = self.base.model.unload()
        self.evictions += 1


def _mixable(model: Any, peft_name: str, config: Any, per_row: str) -> bool:
    """True when adapter ``peft_name`` is plain LoRA on linear layers (no DoRA or other variant, no LoRA bias,
    no parameter targets such as MoE experts) placed only in modules matching ``per_row`` (one row per
    image)."""
    from peft.tuners.lora import Linear as LoraLinear

    if getattr(config, "use_dora", False) or getattr(config, "target_parameters", None):
        return False
    if getattr(config, "lora_bias", False):
        return False
    pattern = re.compile(per_row)
    placed = [(n, m) for n, m in model.named_modules() if peft_name in getattr(m, "lora_A", {})]
    return bool(placed) and all(
        isinstance(m, LoraLinear) and peft_name not in m.lora_variant and pattern.search(n) for n, m in placed
    )


@contextlib.contextmanager
def _gathered(model: Any, rows: list[str]) -> Iterator[None]:
    """Within the block, every LoRA linear layer of ``model`` applies row i's adapter ``rows[i]`` (``BASE``:
    none) to row i: its rows' A and B (B times the adapter's scaling) are gathered once here into per-row
    stacks (zero-padded to the largest rank), and each forward adds ``B_i A_i x_i`` for all rows in two
    batched matmuls. Rows repeated by beam search (``num_beams`` copies of each row) use their row's."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    patched = []
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        here = [n for n in dict.fromkeys(rows) if n in module.lora_A]
        a = b = None
        if here:
            rank = max(module.lora_A[n].weight.shape[0] for n in here)
            w = module.lora_A[here[0]].weight
            a = w.new_zeros(len(rows), rank, w.shape[1])
            b = w.new_zeros(len(rows), module.lora_B[here[0]].weight.shape[0], rank)
            for i, name in enumerate(rows):
                if name in module.lora_A:
                    r = module.lora_A[name].weight.shape[0]
                    a[i, :r] = module.lora_A[name].weight
                    b[i, :, :r] = module.lora_B[name].weight * module.scaling[name]

        def forward(self: Any, x: Any, *args: Any, _a: Any = a, _b: Any = b, **kwargs: Any) -> Any:
            result = self.base_layer(x, *args, **kwargs)
            if _a is None:  # no row's adapter is placed here
                return result
            copies = x.shape[0] // _a.shape[0]
            if copies != 1:
                _a, _b = _a.repeat_interleave(copies, 0), _b.repeat_interleave(copies, 0)
            h = torch.einsum("b...i,bri->b...r", x.to(_a.dtype), _a)
            return result + torch.einsum("b...r,bor->b...o", h, _b).to(result.dtype)

        module.forward = types.MethodType(forward, module)  # the instance's own, removed below
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class LoraEngine:
    """One adapter of a :class:`LoraSet` as an OCREngine."""

    def __init__(self, adapters: LoraSet, adapter: str | None):
        self.adapters = adapters
        self.adapter = adapter
        self.name = f"{adapters.base.name}+{adapter}" if adapter else adapters.base.name

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        return self.adapters.recognize(images, generation, [self.adapter] * len(images))
