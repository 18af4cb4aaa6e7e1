"""What the training loop runs on: the device check, mixed precision, the adapter and the loss wrapper."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from deepsynth.config import ConfigError
from deepsynth.models.base import ModelAdapter
from deepsynth.training.config import TrainConfig


class LossModule(torch.nn.Module):
    """Puts ``adapter.loss`` inside ``forward`` so DDP/FSDP/autocast wrap the whole computation.

    Returns ``(loss, ok)``; a batch that is None, has all labels masked or gives a non-finite loss returns a
    zero loss touching every trainable parameter (so all processes still exchange gradients) and ok=False.
    """

    def __init__(self, adapter: ModelAdapter):
        super().__init__()
        self.model = adapter.model
        self._adapter = [adapter]  # a list keeps the adapter out of the module tree

    def _zero(self) -> torch.Tensor:
        return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), torch.zeros(()))

    def forward(self, batch: dict[str, Any] | None) -> tuple[torch.Tensor, str]:
        if batch is None:
            return self._zero(), "empty"
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if isinstance(labels, torch.Tensor) and not bool((labels != -100).any()):
            return self._zero(), "all labels masked"
        loss = self._adapter[0].loss(batch)
        if not torch.isfinite(loss.detach()).all():
            return self._zero(), f"non-finite loss ({loss.item()})"
        return loss, ""


def cpu_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast is fast."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is None:
        return False
    found = dict(caps())
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def choose_precision(requested: str) -> str:
    """accelerate's mixed_precision value.

    ``auto``: bf16 on a CUDA GPU that supports it, else fp32. ``bf16`` also runs on a CPU with native bf16
    (AVX512-BF16 / AMX) as autocast; elsewhere it falls back to fp32 with a warning, as ``fp16`` does on CPU.
    On the development CPU (AVX512-BF16, one core) PP-OCR handwriting steps were only ~8% faster on average
    (paired over the same 90 batches; narrow batches slower), so fp32 stays the recipes' choice.
    """
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if requested == "bf16" and not cuda and not cpu_bf16():
        warnings.warn(
            "precision=bf16: this CPU has no native bf16 (AVX512-BF16/AMX); training in fp32", stacklevel=2
        )
        return "no"
    if requested == "fp16" and not cuda:
        warnings.warn("precision=fp16 needs CUDA; training in fp32 on CPU", stacklevel=2)
        return "no"
    return "no" if requested == "fp32" else requested


def cpu_only() -> bool:
    """True when there is no accelerator device (or ACCELERATE_USE_CPU asks for the CPU)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return not (
        torch.cuda.is_available()
        or (mps is not None and mps.is_available())
        or (xpu is not None and xpu.is_available())
    )


def build_adapter(cfg: TrainConfig) -> ModelAdapter:
    """The model adapter for ``cfg.model`` from the engine registry (must be trainable)."""
    from deepsynth.models.registry import load_engine

    spec = f"{cfg.model.family}:{cfg.model.path}" if cfg.model.path else cfg.model.family
    return ensure_trainable(load_engine(spec, **dict(cfg.model.options)), cfg.model.family)


def ensure_trainable(engine: Any, family: str) -> ModelAdapter:
    """``engine`` itself when it is a :class:`ModelAdapter`, else a TypeError naming the family."""
    if not isinstance(engine, ModelAdapter):
        raise TypeError(
            f"model family {family!r} is not trainable ({type(engine).__name__} is not a ModelAdapter)"
        )
    return engine


def freeze_parameters(model: torch.nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training the parameters under any of ``prefixes`` (module paths; a LoRA wrapper's prefix is
    ignored); returns how many were frozen. A prefix that matches nothing is a ConfigError."""
    total = 0
    for prefix in prefixes:
        hits = [p for name, p in model.named_parameters() if name == prefix or name.startswith(prefix + ".")
                or f".{prefix}." in f".{name}"]  # fmt: skip
        if not hits:
            raise ConfigError(f"model.freeze: no parameter under {prefix!r}")
        for p in hits:
            if p.requires_grad:
                p.requires_grad_(False)
                total += p.numel()
    return total


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
