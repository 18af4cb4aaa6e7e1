"""Turn user files (image bytes, PDFs, base64 / data URIs) into page images, with limits and clear errors.

Everything wrong with a user's file becomes an :class:`InputError` carrying an HTTP status (4xx), a short
``kind`` (used as the error type in responses and metrics) and a message that names the file.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from deepsynth.inference.limits import LimitExceeded, RequestBudget, ServingLimits
from deepsynth.inference.pdf import PDFError, is_pdf, render_pdf

IMAGE_TYPES = "PNG, JPEG, TIFF, WebP, BMP or GIF"
_ACCEPTED_CONTENT_TYPES = ("image/", "application/pdf", "application/x-pdf", "application/octet-stream")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+/-]*)(?P<params>(;[\w-]+=[\w.-]+)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S
)


class InputError(ValueError):
    """A bad user input; ``status`` is the HTTP status to answer with (400, 413, 415, ...)."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None):
        self.status = status
        self.status_code = status
        self.kind = kind
        self.param = param
        super().__init__(message)


@dataclass
class PageInput:
    """One page to read: which file it came from and its 1-based page number in that file."""

    source: str
    page: int
    image: Image.Image


def decode_file(
    data: bytes,
    name: str,
    content_type: str | None = None,
    limits: ServingLimits | None = None,
    *,
    budget: RequestBudget | None = None,
) -> list[PageInput]:
    """Decode one uploaded file (image or PDF, detected from its bytes) into RGB page images.

    ``budget`` carries the request's pages and pixels so far (several files of one request share it);
    without one the file is a request of its own under ``limits``."""
    budget = budget or RequestBudget(limits or ServingLimits())
    limits = budget.limits
    pages_so_far = budget.pages
    if not data:
        raise InputError(400, "empty_file", f"file {name!r} is empty (0 bytes)", name)
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith(_ACCEPTED_CONTENT_TYPES):
        raise InputError(
            415,
            "unsupported_media_type",
            f"file {name!r} has content type {ctype!r}; send an image ({IMAGE_TYPES}) or a PDF",
            name,
        )
    try:
        images = (render_pdf if is_pdf(data) else _decode_image)(data, name, budget)
    except LimitExceeded as exc:
        raise InputError(exc.status, "limit_exceeded", str(exc), name) from exc
    except PDFError as exc:
        status = 413 if exc.kind == "too_many_pages" else 400
        if exc.kind == "too_many_pages" and pages_so_far:
            msg = f"{exc} (with the {pages_so_far} pages before it in this request, limit {limits.max_pages})"
            raise InputError(status, exc.kind, msg, name) from exc
        raise InputError(status, exc.kind, str(exc), name) from exc
    return [PageInput(name, i + 1, img) for i, img in enumerate(images)]


def _decode_image(data: bytes, name: str, budget: RequestBudget) -> list[Image.Image]:
    limits = budget.limits
    room = limits.max_pages - budget.pages
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InputError(
            413,
            "image_too_large",
            f"file {name!r} is too large to decode ({exc}); the limit is {limits.max_pixels / 1e6:.1f} MP",
            name,
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            400, "invalid_image", f"file {name!r} is not a readable image or PDF ({IMAGE_TYPES} or PDF)", name
        ) from exc
    except Exception as exc:
        raise InputError(
            400, "invalid_image", f"file {name!r} is not a readable image ({type(exc).__name__}: {exc})", name
        ) from exc
    w, h = img.size
    if w * h > limits.max_pixels:
        raise InputError(
            413,
            "image_too_large",
            f"file {name!r} is {w}x{h} = {w * h / 1e6:.1f} MP; the limit is {limits.max_pixels / 1e6:.1f} MP",
            name,
        )
    if min(w, h) < limits.min_side:
        raise InputError(
            400, "image_too_small", f"file {name!r} is {w}x{h} px; each side needs >= {limits.min_side}"
        )
    frames = image_frames(img)
    if frames > room:
        raise InputError(
            413,
            "too_many_pages",
            f"file {name!r} has {frames} frames; {room} pages left of {limits.max_pages}",
            name,
        )
    out = []
    try:
        for i in range(frames):
            img.seek(i)
            frame = f"file {name!r}" + (f" frame {i + 1}" if frames > 1 else "")
            budget.admit(*img.size, frame)  # from the header, before the pixels are decoded
            img.load()
            out.append(_to_rgb(img))
    except LimitExceeded:
        raise
    except Exception as exc:  # truncated / corrupt pixel data
        raise InputError(
            400, "invalid_image", f"file {name!r} is corrupt ({type(exc).__name__}: {exc})", name
        ) from exc
    if not out and room <= 0:
        raise InputError(413, "too_many_pages", f"request has more than {limits.max_pages} pages", name)
    return out


def image_frames(img: Image.Image) -> int:
    """How many pages an opened image is (the frames of a TIFF / MPO; one for any other format)."""
    return getattr(img, "n_frames", 1) if img.format in {"TIFF", "MPO"} else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, "white")
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode.startswith("I;16") or img.mode == "I":
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def decode_base64(value: str, field: str) -> tuple[bytes, str | None]:
    """Bytes (and declared mime type, if any) of a raw base64 string or a ``data:`` URI.

    Remote URLs are refused: the server never fetches anything (no SSRF).
    """
    if not isinstance(value, str):
        raise InputError(400, "invalid_request", f"{field} must be a base64 string or a data: URI", field)
    value = value.strip()
    lowered = value[:16].lower()
    if lowered.startswith(("http://", "https://", "ftp://", "file:")):
        raise InputError(
            400,
            "remote_url_not_allowed",
            f"{field}: remote URLs are not fetched; send the image inline as a data: URI (data:image/png;base64,...)",
            field,
        )
    mime = None
    if lowered.startswith("data:"):
        m = _DATA_URI.match(value)
        if m is None or not m.group("b64"):
            raise InputError(400, "invalid_data_uri", f"{field}: expected data:<mime>;base64,<data>", field)
        mime, value = m.group("mime") or None, m.group("data")
    elif _SCHEME.match(lowered):
        raise InputError(
            400, "invalid_request", f"{field}: only data: URIs or raw base64 are accepted", field
        )
    try:
        return base64.b64decode("".join(value.split()), validate=True), mime
    except (binascii.Error, ValueError) as exc:
        raise InputError(400, "invalid_base64", f"{field}: not valid base64 ({exc})", field) from exc
