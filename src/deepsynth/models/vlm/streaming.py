"""Text pieces out of ``generate`` while it runs: a transformers streamer and a stop criterion.

:class:`PieceStreamer` receives every new token from ``generate`` (transformers' ``BaseStreamer`` protocol),
decodes the answer so far with the adapter's own post-processing and emits the text that the next token can
no longer change: the answer as it was one token ago, when the new answer still starts with it. A byte
that is only half of a character, a space that the next token's punctuation removes, or a grounding tag the
post-processing is still reading is held back until it settles, so the pieces joined are a prefix of the
final text (the caller sends the rest).

:class:`StopWhen` ends the generation when its check says so (a client that went away).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from deepsynth.models.base import StopCheck, TextSink


class PieceStreamer(BaseStreamer):
    """Emit settled text pieces of one generated answer (batch size 1; the first ``put`` is the prompt)."""

    def __init__(self, decode: Callable[[list[int]], str], emit: TextSink, ends: set[int], pad: int | None):
        self.decode = decode
        self.emit = emit
        self.ends = ends
        self.pad = pad if pad not in ends else None  # a pad that is also the end token ends the answer
        self.ids: list[int] = []
        self.sent = ""
        self._previous = ""  # the answer decoded one token ago
        self._prompt = True
        self._ended = False

    def put(self, value: Any) -> None:
        if value.dim() > 1:
            if value.shape[0] != 1:
                raise ValueError(
                    f"PieceStreamer streams one image at a time, got a batch of {value.shape[0]}"
                )
            value = value[0]
        if self._prompt:  # generate() first hands over the prompt (or the decoder start token)
            self._prompt = False
            return
        if self._ended:
            return
        for t in value.tolist():
            if t in self.ends:
                self._ended = True
                break
            if t != self.pad:
                self.ids.append(t)
        text = self.decode(self.ids)
        settled = self._previous if text.startswith(self._previous) else ""
        self._previous = text
        if len(settled) > len(self.sent) and settled.startswith(self.sent):
            piece, self.sent = settled[len(self.sent) :], settled
            self.emit(piece)

    def end(self) -> None:
        """Nothing to flush: the caller sends what is left of the final text."""


class StopWhen(StoppingCriteria):
    """Stop every row of the batch once ``check()`` is True (checked after each generated token)."""

    def __init__(self, check: StopCheck):
        self.check = check

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), bool(self.check()), dtype=torch.bool, device=input_ids.device
        )
