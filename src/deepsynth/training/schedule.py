"""Learning-rate schedule and optimizer construction (AdamW, no weight decay on biases and norms)."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass

import torch

from deepsynth.training.config import OptimSettings

log = logging.getLogger(__name__)


@dataclass
class WarmupDecay:
    """Multiplier for LambdaLR: linear warmup to 1, then cosine/linear decay to ``min_ratio`` at ``total``."""

    warmup: int
    total: int | None
    kind: str = "cosine"
    min_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant" or not self.total or self.total <= self.warmup:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1 - progress
        return self.min_ratio + (1 - self.min_ratio) * shape


def optimizer_name(o: OptimSettings) -> str:
    """The optimizer ``o.name`` resolves to: ``auto`` = paged 8-bit AdamW where CUDA + bitsandbytes exist."""
    if o.name != "auto":
        return o.name
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        return "paged_adamw_8bit"
    return "adamw"


def build_optimizer(model: torch.nn.Module, o: OptimSettings) -> torch.optim.Optimizer:
    """AdamW (or paged 8-bit AdamW) over trainable parameters; 1-D tensors (biases, norms) get no weight decay."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    name = optimizer_name(o)
    log.info("optimizer: %s (lr %g, weight decay %g)", name, o.lr, o.weight_decay)
    if name == "paged_adamw_8bit":
        if not torch.cuda.is_available():
            raise ValueError("optim.name=paged_adamw_8bit needs CUDA and bitsandbytes; use adamw on CPU")
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, o: OptimSettings, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    fn = WarmupDecay(o.warmup_steps, total_steps, o.schedule, o.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
