"""Tesseract 5 baseline through tesserocr (in-process; ~10x faster than spawning the CLI per image).

Uses Debian's tessdata (``/usr/share/tesseract-ocr/5/tessdata/``) with ``eng+fra+deu`` by default; override
with ``path=`` / ``lang=`` or ``TESSDATA_PREFIX``. Line mode uses page segmentation mode 7 (single text line);
page mode uses mode 3 (automatic layout) and returns Tesseract's own text lines in its reading order.
``psm=`` picks another mode, ``height=`` rescales line crops to that many pixels and ``pad=`` adds a white
border of that share of the height (``--engine-opt psm=6 pad=0.25``). Measured on tapuscorpus_fr
(``bench/results/tesseract_line_modes.json``): no mode, border or rescale beat the defaults on both a
stratified sample and the first 100 lines, so the defaults stay; DPI hints changed nothing.
A missing tesserocr / Tesseract data raises :class:`TesseractUnavailable` with the fix, never a crash later.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from deepsynth.models.base import Prediction, char_tokens
from deepsynth.models.generation import GenerationConfig

DEFAULT_TESSDATA = "/usr/share/tesseract-ocr/5/tessdata/"
DEFAULT_LANG = "eng+fra+deu"
INSTALL_HINT = (
    "install it with `make system-deps` (apt: tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra "
    "tesseract-ocr-deu) and `pip install tesserocr`"
)


class TesseractUnavailable(RuntimeError):
    """tesserocr, the Tesseract library or the requested language data is missing."""


def _tessdata_path(path: str | None) -> str:
    candidate = path or os.environ.get("TESSDATA_PREFIX") or DEFAULT_TESSDATA
    return candidate if candidate.endswith("/") else candidate + "/"


def check_available(path: str | None = None, lang: str = DEFAULT_LANG) -> str:
    """Return the tessdata path if tesserocr and every language in ``lang`` are usable, else raise."""
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # before libtesseract starts its OpenMP pool
    try:
        import tesserocr
    except ImportError as exc:
        raise TesseractUnavailable(f"tesserocr is not installed; {INSTALL_HINT}") from exc
    data = _tessdata_path(path)
    if not Path(data).is_dir():
        raise TesseractUnavailable(f"Tesseract data directory {data} not found; {INSTALL_HINT}")
    _, have = tesserocr.get_languages(data)
    missing = [code for code in lang.split("+") if code not in have]
    if missing:
        raise TesseractUnavailable(
            f"Tesseract language data {missing} not in {data} (found {sorted(have)}); {INSTALL_HINT}"
        )
    return data


class TesseractEngine:
    """OCREngine over ``tesserocr.PyTessBaseAPI`` (one API instance, guarded by a lock)."""

    def __init__(
        self,
        *,
        mode: Literal["line", "page"] = "line",
        lang: str = DEFAULT_LANG,
        path: str | None = None,
        psm: int | None = None,
        height: int | None = None,
        pad: float = 0.0,
    ) -> None:
        if mode not in ("line", "page"):
            raise ValueError(f"tesseract mode must be 'line' or 'page', got {mode!r}")
        if psm is not None and not 0 <= psm <= 13:
            raise ValueError(f"tesseract psm must be a page segmentation mode 0-13, got {psm!r}")
        if pad < 0 or (height is not None and height < 8):
            raise ValueError(f"tesseract pad must be >= 0 and height >= 8, got pad={pad!r} height={height!r}")
        data = check_available(path, lang)
        import tesserocr

        default = tesserocr.PSM.SINGLE_LINE if mode == "line" else tesserocr.PSM.AUTO
        self._api = tesserocr.PyTessBaseAPI(path=data, lang=lang, psm=default if psm is None else psm)
        self.height, self.pad = height, pad
        self._tesserocr = tesserocr
        self._lock = threading.Lock()
        self.mode = mode
        self.lang = lang
        self.name = f"tesseract-{tesserocr.tesseract_version().split()[1]}-{lang}[{mode}]"

    def _prepare(self, image: Image.Image) -> Image.Image:
        """The line crop Tesseract sees: rescaled to ``height`` and framed by ``pad`` x height of white."""
        if self.height and image.height != self.height:
            width = max(1, round(image.width * self.height / image.height))
            image = image.resize((width, self.height), Image.Resampling.LANCZOS)
        if self.pad:
            from PIL import ImageOps

            image = ImageOps.expand(image, border=round(self.pad * image.height), fill="white")
        return image

    def _read_line(self, image: Image.Image) -> Prediction:
        self._api.SetImage(self._prepare(image))
        text = " ".join(self._api.GetUTF8Text().split())
        conf = self._api.MeanTextConf()
        return Prediction(text=text, confidence=conf / 100.0 if conf >= 0 else None)

    def _read_page(self, image: Image.Image) -> Prediction:
        tess = self._tesserocr
        self._api.SetImage(image)
        self._api.Recognize()
        lines: list[dict[str, Any]] = []
        it = self._api.GetIterator()
        level = tess.RIL.TEXTLINE
        if it is not None:
            for line in tess.iterate_level(it, level):
                text = line.GetUTF8Text(level)
                if text is None or not text.strip():
                    continue
                box = line.BoundingBox(level)
                lines.append({
                    "text": " ".join(text.split()),
                    "box": list(box) if box else None,
                    "confidence": line.Confidence(level) / 100.0,
                })  # fmt: skip
        conf = self._api.MeanTextConf()
        return Prediction(
            text="\n".join(ln["text"] for ln in lines),
            confidence=conf / 100.0 if conf >= 0 else None,
            lines=lines,
        )

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read each image (line crops in line mode, full pages in page mode)."""
        read = self._read_line if self.mode == "line" else self._read_page
        preds = []
        with self._lock:
            for image in images:
                t0 = time.perf_counter()
                pred = read(image.convert("RGB") if image.mode not in ("RGB", "L") else image)
                pred.meta["seconds"] = round(time.perf_counter() - t0, 4)
                pred.num_tokens, pred.prompt_tokens = char_tokens(pred.text), 0  # usage: characters out
                preds.append(pred)
        return preds

    def close(self) -> None:
        self._api.End()


def build(arg: str | None = None, **kwargs: Any) -> TesseractEngine:
    """Registry factory: ``tesseract`` (line mode), ``tesseract:page``; kwargs: lang, path, mode, psm, height,
    pad."""
    if arg:
        kwargs.setdefault("mode", arg)
    return TesseractEngine(**kwargs)
