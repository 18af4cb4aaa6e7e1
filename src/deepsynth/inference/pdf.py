"""Render PDF pages to RGB images with pypdfium2 (PDFium is not thread-safe: one lock around every call)."""

from __future__ import annotations

import re
import threading

from PIL import Image

from deepsynth.inference.limits import RequestBudget

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


def is_pdf(data: bytes) -> bool:
    return data[:1024].lstrip().startswith(PDF_MAGIC)


def count_pages(data: bytes, name: str = "document.pdf") -> int:
    with _PDFIUM_LOCK:
        pdf = _open(data, name)
        try:
            return len(pdf)
        finally:
            pdf.close()


def render_pdf(
    data: bytes, name: str = "document.pdf", budget: RequestBudget | None = None
) -> list[Image.Image]:
    """All pages of a PDF as RGB images at ``budget.limits.pdf_dpi``.

    Every page's rendered size is computed from its page box first (a page over ``max_pixels`` is rendered
    at a lower DPI), and all pages are admitted to the request budget (pages, pixels, aspect ratio, model
    pixels) before the first one is rendered: an oversized PDF costs no rendering at all."""
    budget = budget or RequestBudget()
    limits = budget.limits
    room = max(limits.max_pages - budget.pages, 0)
    with _PDFIUM_LOCK:
        pdf = _open(data, name)
        try:
            n = len(pdf)
            if n == 0:
                raise PDFError("no_pages", f"{name}: the PDF has no pages")
            if n > room:
                raise PDFError("too_many_pages", f"{name}: the PDF has {n} pages; the limit is {room}")
            scales = []
            for i in range(n):
                w_pt, h_pt = pdf.get_page_size(i)
                scale = render_scale(w_pt, h_pt, limits.pdf_dpi, limits.max_pixels)
                budget.admit(round(w_pt * scale), round(h_pt * scale), f"{name} page {i + 1}")
                scales.append(scale)
            images = []
            for i, scale in enumerate(scales):
                page = pdf[i]
                try:
                    pil = page.render(scale=scale).to_pil()
                    images.append(pil if pil.mode == "RGB" else pil.convert("RGB"))
                finally:
                    page.close()
            return images
        finally:
            pdf.close()


def render_scale(w_pt: float, h_pt: float, dpi: float, max_pixels: int) -> float:
    """PDFium scale (pixels per point) for ``dpi``, lowered so the page stays within ``max_pixels``."""
    scale = dpi / 72.0
    pixels = (w_pt * scale) * (h_pt * scale)
    if pixels > max_pixels:
        scale *= (max_pixels / pixels) ** 0.5
    return scale


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
