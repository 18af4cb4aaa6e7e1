"""Line recognition in width-sorted batches, shared by the PyTorch adapter and the ONNX engine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from deepsynth.models.base import Prediction, TokenLogprob, char_tokens
from deepsynth.models.generation import GenerationConfig, UnsupportedGeneration
from deepsynth.models.ppocr.charset import Charset
from deepsynth.models.ppocr.lm import LMDecoder
from deepsynth.models.ppocr.preprocess import to_bgr

ProbsFn = Callable[[list[np.ndarray]], np.ndarray]


def recognize_in_batches(
    images: Sequence[Image.Image | np.ndarray],
    probs_fn: ProbsFn,
    charset: Charset,
    batch_size: int,
    generation: GenerationConfig | None = None,
    decoder: LMDecoder | None = None,
) -> list[Prediction]:
    """Read lines from :func:`line_probabilities`: greedy CTC, or ``decoder``'s beam search with its LM.

    Confidence is the mean max probability of the emitted frames (0 for an empty read). With
    ``generation.top_logprobs`` = 0, each character's log-probability (of the frame that emitted it) is on
    ``Prediction.logprobs``; alternatives are refused: a frame's other classes (blank, the neighbour's
    repeat) are not alternatives to the character read.
    """
    want = generation is not None and generation.top_logprobs is not None
    if want and generation.top_logprobs:
        raise UnsupportedGeneration(
            "a CTC recogniser has no alternative tokens per character (top_logprobs must be 0)",
            "top_logprobs",
        )
    results: list[Prediction | None] = [None] * len(images)
    for i, probs in line_probabilities(images, probs_fn, batch_size):
        chars = decoder.emitted(probs, charset) if decoder else charset.emitted(probs[None])[0]
        text = "".join(ch for ch, _ in chars)
        results[i] = Prediction(
            text=text,
            confidence=float(np.mean([p for _, p in chars])) if chars else 0.0,
            finished=True,
            num_tokens=char_tokens(text),
            prompt_tokens=0,
            logprobs=[TokenLogprob(ch, math.log(max(p, 1e-45))) for ch, p in chars] if want else None,
        )
    return [r for r in results if r is not None]


def line_probabilities(
    images: Sequence[Image.Image | np.ndarray], probs_fn: ProbsFn, batch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(input index, [frames, classes] probabilities)`` per line, a batch at a time: lines sorted by aspect
    ratio (less padding, like rapidocr) and run through ``probs_fn`` in BGR batches of ``batch_size``."""
    bgrs = [to_bgr(im) for im in images]
    order = sorted(range(len(bgrs)), key=lambda i: bgrs[i].shape[1] / max(1, bgrs[i].shape[0]))
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + batch_size]
        yield from zip(chunk, probs_fn([bgrs[i] for i in chunk]), strict=True)
