"""Line recognition in width-sorted batches, shared by the PyTorch adapter and the ONNX engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from deepsynth.models.base import Prediction, char_tokens
from deepsynth.models.ppocr.charset import Charset
from deepsynth.models.ppocr.preprocess import to_bgr

ProbsFn = Callable[[list[np.ndarray]], np.ndarray]


def recognize_in_batches(
    images: Sequence[Image.Image | np.ndarray], probs_fn: ProbsFn, charset: Charset, batch_size: int
) -> list[Prediction]:
    """Sort lines by aspect ratio (less padding, like rapidocr), run ``probs_fn`` on BGR batches, greedy-decode.

    Confidence is the mean max probability of the emitted frames (0 for an empty read).
    """
    bgrs = [to_bgr(im) for im in images]
    order = sorted(range(len(bgrs)), key=lambda i: bgrs[i].shape[1] / max(1, bgrs[i].shape[0]))
    results: list[Prediction | None] = [None] * len(bgrs)
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start : start + batch_size]
        probs = probs_fn([bgrs[i] for i in chunk])
        for i, (text, conf) in zip(chunk, charset.decode_greedy(probs), strict=True):
            results[i] = Prediction(
                text=text, confidence=conf, finished=True, num_tokens=char_tokens(text), prompt_tokens=0
            )
    return [r for r in results if r is not None]
