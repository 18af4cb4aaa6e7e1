"""Seeded image augmentations for synthetic text: blur, noise, rotation, perspective, binarisation, JPEG."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass
class Augment:
    """Probability of each augmentation (0 disables it) and its strength range."""

    blur: float = 0.3
    noise: float = 0.4
    rotation: float = 0.3
    perspective: float = 0.2
    binarize: float = 0.1
    jpeg: float = 0.3
    max_degrees: float = 2.0
    max_noise_sigma: float = 12.0
    max_blur_radius: float = 1.2

    @classmethod
    def none(cls) -> Augment:
        return cls(blur=0, noise=0, rotation=0, perspective=0, binarize=0, jpeg=0)

    def __call__(
        self, img: Image.Image, rng: random.Random, background: int = 255
    ) -> tuple[Image.Image, list[str]]:
        """Apply the augmentations drawn with ``rng``; returns the image and the names of those applied."""
        applied = []
        fill = (background,) * 3
        if rng.random() < self.rotation:
            img = img.rotate(
                rng.uniform(-self.max_degrees, self.max_degrees), Image.BICUBIC, expand=True, fillcolor=fill
            )
            applied.append("rotation")
        if rng.random() < self.perspective:
            img = _perspective(img, rng, fill)
            applied.append("perspective")
        if rng.random() < self.blur:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, self.max_blur_radius)))
            applied.append("blur")
        if rng.random() < self.noise:
            arr = np.asarray(img, dtype=np.float32)
            noise = np.random.default_rng(rng.getrandbits(32)).normal(
                0, rng.uniform(2, self.max_noise_sigma), arr.shape
            )
            img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
            applied.append("noise")
        if rng.random() < self.binarize:
            gray = np.asarray(img.convert("L"))
            threshold = (int(gray.min()) + int(gray.max())) / 2
            img = Image.fromarray(np.where(gray > threshold, 255, 0).astype(np.uint8)).convert("RGB")
            applied.append("binarize")
        if rng.random() < self.jpeg:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=rng.randint(30, 85))
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
            applied.append("jpeg")
        return img, applied


def _perspective(img: Image.Image, rng: random.Random, fill: tuple[int, int, int]) -> Image.Image:
    """Move each corner by up to 4% of the size; solve the 8 perspective coefficients."""
    w, h = img.size
    dx, dy = 0.04 * w, 0.04 * h
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    src = [(x + rng.uniform(-dx, dx), y + rng.uniform(-dy, dy)) for x, y in dst]
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return img.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC, fillcolor=fill)
