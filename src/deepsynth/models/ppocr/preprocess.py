"""The ONE preprocessing of line images for the PP-OCR recogniser, shared by training, PyTorch inference and
the ONNX engine. It reproduces rapidocr's ``TextRecognizer.resize_norm_img`` exactly: BGR, resize to height 48
keeping the aspect ratio (width rounded up, bilinear ``cv2.resize``), scale to [-1, 1], pad right with zeros to
``int(48 * max(320 / 48, widest aspect ratio in the batch))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

HEIGHT = 48
MIN_WIDTH = 320
MAX_STRETCH = 4  # fit_frames widens a training line at most this much


def to_bgr(image: Image.Image | np.ndarray) -> np.ndarray:
    """PIL images (any mode) → uint8 BGR array; numpy arrays are taken as already BGR (HxWx3) or gray (HxW)."""
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")  # transparent pixels → white, not whatever colour they hide
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    arr = np.asarray(image)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 BGR array, got shape {arr.shape}")
    return arr[:, :, :3] if arr.shape[2] == 4 else arr


def batch_width(sizes: Sequence[tuple[int, int]], height: int = HEIGHT, min_width: int = MIN_WIDTH) -> int:
    """Padded width of a batch of (width, height) images."""
    ratio = max([min_width / height] + [w / h for w, h in sizes])
    return int(height * ratio)


def frames_for_width(width: int) -> int:
    """CTC frames the recogniser emits for a padded input width (stride 2, 2 and a 2-wide pool)."""
    return ((width + 1) // 2 + 1) // 2 // 2


def fit_frames(bgr: np.ndarray, frames: int, height: int = HEIGHT) -> np.ndarray:
    """Stretch a line horizontally so that, at ``height``, it gives at least ``frames`` CTC frames.

    Training only: a line whose text needs more frames than its width yields (tall crops of dense handwriting)
    is widened instead of dropped. Lines that already fit are returned unchanged (exact rapidocr parity).
    """
    h, w = bgr.shape[:2]
    natural = int(math.ceil(height * (w / float(h))))
    if frames_for_width(max(natural, MIN_WIDTH)) >= frames:
        return bgr
    target = 8 * frames + 8  # 8 input columns per frame, one frame of margin
    if target > MAX_STRETCH * max(natural, MIN_WIDTH):
        raise ValueError(
            f"text needs {frames} CTC frames, the image gives {frames_for_width(max(natural, MIN_WIDTH))} "
            f"even widened {MAX_STRETCH}x (does the label belong to this image?)"
        )
    new_w = int(math.ceil(target * h / float(height)))
    return cv2.resize(bgr, (new_w, h), interpolation=cv2.INTER_CUBIC)


def resize_norm(bgr: np.ndarray, width: int, height: int = HEIGHT) -> np.ndarray:
    """One image → float32 [3, height, width] in [-1, 1], zero-padded on the right."""
    h, w = bgr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image ({w}x{h})")
    resized_w = min(width, int(math.ceil(height * (w / float(h)))))
    resized = cv2.resize(bgr, (resized_w, height)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def preprocess_batch(
    images: Sequence[Image.Image | np.ndarray], height: int = HEIGHT, min_width: int = MIN_WIDTH
) -> np.ndarray:
    """Images (PIL RGB or BGR arrays) → float32 [batch, 3, height, width] exactly as rapidocr feeds the model."""
    if not images:
        return np.zeros((0, 3, height, min_width), dtype=np.float32)
    bgrs = [to_bgr(im) for im in images]
    width = batch_width([(b.shape[1], b.shape[0]) for b in bgrs], height, min_width)
    return np.stack([resize_norm(b, width, height) for b in bgrs])
