"""Render PDF pages to RGB images with pypdfium2 (PDFium is not thread-safe: one lock around every call)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from PIL import Image

_PDFIUM_LOCK = threading.Lock()  # PDFium itself is process-global and not thread-safe

PDF_MAGIC = b"%PDF-"
_PAGES = re.compile(rb"/Type\s*/Pages\b")
_PAGE = re.compile(rb"/Type\s*/Page\b(?!s)")
_ENCRYPT = re.compile(rb"/Encrypt\b")


class PDFError(ValueError):
    """A PDF that cannot be rendered; ``kind`` is no_pages | too_many_pages | encrypted | corrupt_pdf."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass
class PDFLimits:
    dpi: float = 150.0
    max_pages: int = 50
    max_pixels: int = 40_000_000  # a rendered page is scaled down to stay under this


def is_pdf(data: bytes) -> bool:
    return data[:1024].lstrip().startswith(PDF_MAGIC)


def count_pages(data: bytes, name: str = "document.pdf") -> int:
    with _PDFIUM_LOCK:
        pdf = _open(data, name)
        try:
            return len(pdf)
        finally:
            pdf.close()


def render_pdf(data: bytes, name: str = "document.pdf", limits: PDFLimits | None = None) -> list[Image.Image]:
    """All pages of a PDF as RGB images at ``limits.dpi`` (each page capped at ``limits.max_pixels``)."""
    limits = limits or PDFLimits()
    with _PDFIUM_LOCK:
        pdf = _open(data, name)
        try:
            n = len(pdf)
            if n == 0:
                raise PDFError("no_pages", f"{name}: the PDF has no pages")
            if n > limits.max_pages:
                raise PDFError(
                    "too_many_pages", f"{name}: the PDF has {n} pages; the limit is {limits.max_pages}"
                )
            images = []
            for i in range(n):
                page = pdf[i]
                try:
                    w_pt, h_pt = page.get_size()
                    scale = limits.dpi / 72.0
                    pixels = (w_pt * scale) * (h_pt * scale)
                    if pixels > limits.max_pixels:
                        scale *= (limits.max_pixels / pixels) ** 0.5
                    bitmap = page.render(scale=scale)
                    images.append(bitmap.to_pil().convert("RGB"))
                finally:
                    page.close()
            return images
        finally:
            pdf.close()


def _open(data: bytes, name: str):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        # PDFium's error code is a stale process-global (a page-less file reports the previous error or
        # "Success"), so tell the common cases apart from the bytes themselves.
        if _ENCRYPT.search(data):
            raise PDFError("encrypted", f"{name}: the PDF is password-protected") from exc
        if _PAGES.search(data) and not _PAGE.search(data):
            raise PDFError("no_pages", f"{name}: the PDF has no pages") from exc
        raise PDFError("corrupt_pdf", f"{name}: not a readable PDF ({exc})") from exc
