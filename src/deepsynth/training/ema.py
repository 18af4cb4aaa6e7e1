"""Exponential moving average (EMA) of the trainable weights (``ema.decay`` in the training config).

Only the parameters that train are averaged (the LoRA adapters, or the unfrozen weights): frozen weights and
buffers (the folded BatchNorm statistics) never change, so their average is themselves. The update is torch's
(:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, one ``_foreach_lerp_`` over all tensors) with a warm-up,
``decay_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average is not dominated by the
initial weights early on. ``AveragedModel`` is not used because it deep-copies the whole module (a LoRA base
model included) and averages every parameter.

:meth:`WeightEMA.swapped` exchanges the averaged and the training weights in place, one tensor at a time
(no second copy of the model), and exchanges them back on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightEMA:
    """The moving average of ``named_parameters`` (``(name, parameter)`` pairs of the parameters that train)."""

    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.params = dict(named_parameters)
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}
        self.updates = 0
        self.swapped_in = False

    def current_decay(self) -> float:
        """The decay of the next update: ``decay``, lowered during the first steps (warm-up)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current training weights (call after each optimizer step)."""
        if self.swapped_in:
            raise RuntimeError("WeightEMA.update() while the averaged weights are swapped into the model")
        if self.params:
            get_ema_multi_avg_fn(self.current_decay())(
                list(self.shadow.values()), [p.detach() for p in self.params.values()], None
            )
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; the training weights come back on exit."""
        if self.swapped_in:  # nested: the average is already in
            yield
            return
        self._exchange()
        self.swapped_in = True
        try:
            yield
        finally:
            self._exchange()
            self.swapped_in = False

    @torch.no_grad()
    def _exchange(self) -> None:
        for name, p in self.params.items():
            held = self.shadow[name]
            current = p.detach().clone()
            p.copy_(held)
            held.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        """The averaged tensors and the update count (for a training checkpoint)."""
        if self.swapped_in:
            raise RuntimeError("WeightEMA.state_dict() while the averaged weights are swapped into the model")
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; ValueError when it does not fit these parameters.
        The decay stays this object's (the config's), the update count is restored."""
        shadow = state["shadow"]
        missing, unexpected = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(
                f"the EMA state does not fit the trainable parameters (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(
                    f"the EMA state of {name} has shape {tuple(tensor.shape)}, "
                    f"the parameter {tuple(self.shadow[name].shape)}"
                )
            self.shadow[name].copy_(tensor)
        self.updates = int(state["updates"])
