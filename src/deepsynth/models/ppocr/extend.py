"""Grow the recogniser's classifier by new output classes, or keep only some of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def grow_head(model: torch.nn.Module, bases: Sequence[int | None], *, bias_offset: float = -4.0) -> None:
    """Append one class per entry of ``bases`` to ``model.head.head``.

    Each new row copies the row of its base class (or the mean of all non-blank rows when None); its bias
    is the base bias + ``bias_offset`` (negative: the new class starts less likely than its base, so
    current predictions are unchanged). Updates ``config.head_out_channels``.
    """
    old: torch.nn.Linear = model.head.head
    weight, bias = old.weight.data, old.bias.data
    mean_w, mean_b = weight[1:].mean(dim=0), bias[1:].mean()
    rows = [weight[b] if b is not None else mean_w for b in bases]
    biases = [(bias[b] if b is not None else mean_b) + bias_offset for b in bases]
    _replace_head(model, torch.cat([weight, torch.stack(rows)]), torch.cat([bias, torch.stack(biases)]))


@torch.no_grad()
def select_head(model: torch.nn.Module, keep: Sequence[int]) -> None:
    """Keep only the classes ``keep`` (in that order) of ``model.head.head``; updates ``config.head_out_channels``.

    The kept classes' logits are unchanged; the softmax then runs over them alone.
    """
    old: torch.nn.Linear = model.head.head
    index = torch.as_tensor(list(keep), dtype=torch.long, device=old.weight.device)
    _replace_head(model, old.weight.index_select(0, index), old.bias.index_select(0, index))


@torch.no_grad()
def _replace_head(model: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Swap ``model.head.head`` for a Linear holding ``weight``/``bias`` (same trainability as the old one)."""
    old: torch.nn.Linear = model.head.head
    new = torch.nn.Linear(old.in_features, weight.shape[0], device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    new.bias.copy_(bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    new.bias.requires_grad_(old.bias.requires_grad)
    model.head.head = new
    model.config.head_out_channels = new.out_features
