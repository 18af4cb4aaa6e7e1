"""Activation checkpointing of the PP-LCNetV4 backbone: recompute instead of store, same gradients.

Nearly all of the recogniser's training memory is the backbone's activations kept for the backward pass (about
1 GB for a batch of 8 lines 1,200 px wide; the head and the CTC loss need ~0.3 GB). With ``blocks`` each of the
13 depthwise-separable blocks (and the stem) keeps only its input and is re-run during the backward pass; with
``stages`` the same is done per stage (fewer, larger units). The math is unchanged: the backbone has no dropout
and the RNG state is restored for the re-run anyway (``torch.utils.checkpoint``, non-reentrant).
Measured in bench/bench_train_memory.py.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

MODES = ("off", "stages", "blocks")


def parse_mode(value: Any) -> str:
    """``model.options.gradient_checkpointing`` → one of :data:`MODES` (true = ``blocks``, false/None = ``off``)."""
    text = str(value).lower()
    if value is None or text in ("false", "off", "no", "0"):
        return "off"
    if text in ("true", "on", "yes", "1"):
        return "blocks"
    if text in MODES:
        return text
    raise ValueError(f"gradient_checkpointing must be one of {list(MODES)} or a boolean, got {value!r}")


def _checkpointed(self: torch.nn.Module, *args: Any) -> Any:
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False)
    return forward(self, *args)


def units(core: torch.nn.Module, mode: str) -> list[torch.nn.Module]:
    """The modules ``mode`` checkpoints in the transformers recogniser (its stem plus its stages or blocks)."""
    if mode == "off":
        return []
    encoder = core.get_submodule("model.backbone.encoder")
    stages = list(encoder.blocks)
    inner = stages if mode == "stages" else [block for stage in stages for block in stage.blocks]
    return [encoder.convolution, *inner]


def enable(core: torch.nn.Module, mode: Any) -> int:
    """Checkpoint the backbone of ``core`` (the transformers recogniser) per ``mode``; returns how many units."""
    chosen = units(core, parse_mode(mode))
    for module in {*units(core, "stages"), *units(core, "blocks")}:  # idempotent: undo an earlier mode
        module.__dict__.pop("forward", None)
    for module in chosen:
        module.forward = types.MethodType(_checkpointed, module)
    return len(chosen)
