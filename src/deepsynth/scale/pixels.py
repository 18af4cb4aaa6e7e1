"""Decoded images between pipeline stages: raw RGB bytes + size (lossless, Arrow-friendly, no re-encoding)."""

from __future__ import annotations

from typing import Any

from PIL import Image


def to_pixels(image: Image.Image) -> dict[str, Any]:
    """Columns ``width``, ``height``, ``pixels`` of an RGB image."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return {"width": rgb.width, "height": rgb.height, "pixels": rgb.tobytes()}


def from_pixels(row: dict[str, Any]) -> Image.Image:
    """The RGB image of a row written by :func:`to_pixels`."""
    return Image.frombytes("RGB", (row["width"], row["height"]), row["pixels"])


NO_PIXELS = {"width": 0, "height": 0, "pixels": b""}
