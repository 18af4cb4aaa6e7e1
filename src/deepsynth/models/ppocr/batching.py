"""Line recognition in width-sorted batches, shared by the PyTorch adapter and the ONNX engine."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from deepsynth.models.base import Prediction, TokenLogprob, char_tokens
from deepsynth.models.generation import GenerationConfig, UnsupportedGeneration
from deepsynth.models.ppocr.charset import Charset
from deepsynth.models.ppocr.preprocess import to_bgr

ProbsFn = Callable[[list[np.ndarray]], np.ndarray]


def recognize_in_batches(
    images: Sequence[Image.Image | np.ndarray],
    probs_fn: ProbsFn,
    charset: Charset,
    batch_size: int,
    generation: GenerationConfig | None = None,
) -> list[Prediction]:
    """Sort lines by aspect ratio (less padding, like rapidocr), run ``probs_fn`` on BGR batches, greedy-decode.

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
    bgrs = [to_bgr(im) for im in images]
    order = sorted(range(len(bgrs)), key=lambda i: bgrs[i].shape[1] / max(1, bgrs[i].shape[0]))
    results: list[Prediction | None] = [None] * len(bgrs)
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + batch_size]
        probs = probs_fn([bgrs[i] for i in chunk])
        for i, chars in zip(chunk, charset.emitted(probs), strict=True):
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
