"""Seeded augmentation of real line images for training (handwriting-style distortions, via albumentations).

What HTR training uses: slant/shear and small rotation, elastic and grid distortion, stroke width (erode or
dilate), contrast/brightness and background, blur, noise and JPEG. One call is fully determined by its seed, so a
resumed run sees the same augmented images as an uninterrupted one::

    aug = LineAugment()                      # the defaults are the measured training defaults
    img = aug(pil_image, seed=1234)          # RGB PIL in, RGB PIL out
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from deepsynth.config import ConfigError


@dataclass
class LineAugment:
    """Probability of each distortion (0 disables it) and its strength. ``p`` gates the whole pipeline."""

    p: float = 0.8  # share of training images that get any augmentation
    shear: float = 0.5  # slant: horizontal shear of up to ``max_shear`` degrees
    max_shear: float = 12.0
    rotate: float = 0.3
    max_rotate: float = 1.5
    elastic: float = 0.2  # smooth local warps of the strokes
    grid: float = 0.2  # grid distortion (uneven letter widths)
    stroke: float = 0.3  # erode or dilate (thinner / thicker pen)
    contrast: float = 0.5  # brightness, contrast and gamma
    blur: float = 0.2
    noise: float = 0.2
    jpeg: float = 0.2

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not f.name.startswith("max_") and not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"augment.{f.name} is a probability in [0, 1], got {v!r}")
        self._pipeline: Any = None

    @classmethod
    def off(cls) -> LineAugment:
        return cls(p=0.0)

    @property
    def enabled(self) -> bool:
        return self.p > 0

    def pipeline(self) -> Any:
        """The albumentations ``Compose`` (built once; import deferred so the data layer stays light)."""
        if self._pipeline is None:
            self._pipeline = _build(self)
        return self._pipeline

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        """Augment one RGB image with a pipeline seeded by ``seed`` (same seed → same output)."""
        if not self.enabled:
            return image
        pipe = self.pipeline()
        pipe.set_random_seed(int(seed) % (2**32))
        arr = np.asarray(image.convert("RGB"))
        if min(arr.shape[:2]) < 4:  # too small to warp meaningfully
            return image
        return Image.fromarray(pipe(image=arr)["image"])


def _build(a: LineAugment) -> Any:
    import albumentations as A
    import cv2

    white = (255, 255, 255)
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": white}
    stroke = A.OneOf(
        [
            A.Morphological(scale=(2, 2), operation="erosion", p=1.0),  # on dark ink: thicker strokes
            A.Morphological(scale=(2, 2), operation="dilation", p=1.0),  # thinner strokes
        ],
        p=a.stroke,
    )
    return A.Compose(
        [
            A.Affine(
                shear={"x": (-a.max_shear, a.max_shear), "y": (0, 0)}, fit_output=True, p=a.shear, **border
            ),
            A.Affine(rotate=(-a.max_rotate, a.max_rotate), fit_output=True, p=a.rotate, **border),
            A.ElasticTransform(alpha=12, sigma=5, p=a.elastic, **border),
            A.GridDistortion(num_steps=6, distort_limit=(-0.2, 0.2), p=a.grid, **border),
            stroke,
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=(-0.4, 0.2), p=a.contrast),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 1.0), p=a.blur),
            A.GaussNoise(std_range=(0.01, 0.05), p=a.noise),
            A.ImageCompression(quality_range=(40, 90), p=a.jpeg),
        ],
        p=a.p,
        seed=0,
    )
