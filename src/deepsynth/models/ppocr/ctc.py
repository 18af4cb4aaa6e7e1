"""CTC loss on logits (blank = 0) and the targets it needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def min_frames(ids: Sequence[int]) -> int:
    """Fewest CTC frames that can emit ``ids`` (a blank is needed between equal neighbours)."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)


def pack_targets(targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated targets + lengths, the layout ``F.ctc_loss`` takes."""
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    return flat, lengths


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss from ``[batch, time, classes]`` logits (never from probabilities), blank 0.

    Computed in float32; samples whose target cannot fit the frames contribute zero (``zero_infinity``).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [time, batch, classes]
    batch, frames = logits.shape[0], logits.shape[1]
    input_lengths = torch.full((batch,), frames, dtype=torch.long)
    return F.ctc_loss(
        log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean", zero_infinity=True
    )
