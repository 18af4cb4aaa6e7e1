"""Shared helpers for the PP-OCR tests: real line samples from ../shared/data and synthetic line images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from deepsynth.data.sample import Sample

SETS = ("fondue_en_print20", "tapuscorpus_fr", "gt4histocr_dta19_lines")


def real_lines(root: Path, per_set: int, sets: tuple[str, ...] = SETS) -> list[Sample]:
    """``per_set`` line samples spread evenly over each set (decoded lazily), skipping untranscribed ones."""
    out: list[Sample] = []
    for name in sets:
        rows = [json.loads(line) for line in (root / name / "manifest.jsonl").open(encoding="utf-8")]
        rows = [r for r in rows if r["level"] == "line" and not r.get("has_untranscribed")]
        step = max(1, len(rows) // per_set)
        for r in rows[::step][:per_set]:
            path = root / name / r["image"]
            out.append(
                Sample(
                    id=r["id"],
                    text=r["text"],
                    image_loader=lambda p=path: Image.open(p),
                    language=r["language"],
                )
            )
    return out


def synthetic_line(text: str, height: int = 32) -> Image.Image:
    """Black text on white, roughly a printed line."""
    font_path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    font = ImageFont.truetype(str(font_path), 22) if font_path.is_file() else ImageFont.load_default()
    width = max(40, int(font.getlength(text)) + 12) if hasattr(font, "getlength") else 12 * len(text) + 12
    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).text((6, 4), text, fill="black", font=font)
    return img


def synthetic_samples(texts: list[str]) -> list[Sample]:
    return [Sample.from_image(f"syn{i}", synthetic_line(t), t) for i, t in enumerate(texts)]
