"""Render text lines and pages with installed Unicode fonts (glyph coverage checked first: never tofu)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from deepsynth.data.augment import Augment
from deepsynth.data.fonts import GlyphError, choose_font, installed_fonts, needed_chars


@functools.lru_cache(maxsize=64)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _font_for(text: str, font: str | Path | None, size: int) -> ImageFont.FreeTypeFont:
    if not installed_fonts():
        # no system fonts at all: Pillow's bundled font covers printable ASCII only
        if all(c.isascii() and (c.isprintable() or c.isspace()) for c in text):
            return ImageFont.load_default(size)
        raise GlyphError(text, needed_chars(text))
    return load_font(str(choose_font(text, font)), size)


def _colours(rng: random.Random) -> tuple[int, int]:
    return rng.randint(215, 255), rng.randint(0, 70)  # background, ink


def _augmenter(augment: bool | Augment) -> Augment:
    if isinstance(augment, Augment):
        return augment
    return Augment() if augment else Augment.none()


def render_line(
    text: str,
    *,
    font: str | Path | None = None,
    size: int = 32,
    seed: int = 0,
    augment: bool | Augment = False,
    padding: int | None = None,
) -> Image.Image:
    """One text line as an RGB image. ``font`` is preferred but replaced by an installed font that has every
    glyph when it lacks one; raises :class:`GlyphError` when no installed font covers the text."""
    rng = random.Random(seed)
    f = _font_for(text, font, size)
    bg, ink = _colours(rng)
    pad = padding if padding is not None else max(2, size // 4)
    ascent, descent = f.getmetrics()
    left, _, right, _ = f.getbbox(text or " ", anchor="ls")
    img = Image.new("RGB", (max(1, right - left) + 2 * pad, ascent + descent + 2 * pad), (bg,) * 3)
    ImageDraw.Draw(img).text((pad - left, pad + ascent), text, font=f, fill=(ink,) * 3, anchor="ls")
    img, _ = _augmenter(augment)(img, rng, bg)
    return img


def render_page(
    lines: list[str],
    *,
    font: str | Path | None = None,
    size: int = 28,
    seed: int = 0,
    augment: bool | Augment = False,
    margin: int | None = None,
    line_spacing: float = 1.4,
) -> Image.Image:
    """Several lines on one page image (one font that covers all of them)."""
    rng = random.Random(seed)
    f = _font_for("\n".join(lines), font, size)
    bg, ink = _colours(rng)
    m = margin if margin is not None else 2 * size
    step = int(size * line_spacing)
    width = max((int(f.getlength(line)) for line in lines), default=1)
    img = Image.new("RGB", (width + 2 * m, step * max(1, len(lines)) + 2 * m), (bg,) * 3)
    draw = ImageDraw.Draw(img)
    ascent, _ = f.getmetrics()
    for i, line in enumerate(lines):
        draw.text((m, m + i * step + ascent), line, font=f, fill=(ink,) * 3, anchor="ls")
    img, _ = _augmenter(augment)(img, rng, bg)
    return img
