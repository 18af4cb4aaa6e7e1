"""Lazy, checked image loading: pixel limit read from the header before decoding, path containment."""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

from PIL import Image

from deepsynth.data.sample import SampleError

# PIL's own default (about 89 Mpx); pages of real scans are far below it (a 600-dpi A4 page is ~35 Mpx).
DEFAULT_MAX_PIXELS = 89_478_485

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
)


def sniff_ext(data: bytes) -> str | None:
    """File extension for encoded image bytes, from their magic number (None if unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return None


@functools.lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    return os.path.realpath(path)


def resolve_inside(root: Path | str, rel: str) -> Path | None:
    """``root/rel`` resolved, or None when it escapes ``root`` (``../``, absolute paths, symlinks out).

    Directory resolutions are cached, so this costs about one ``lstat`` per file on long manifests.
    """
    real_root = _real_dir(str(root))
    joined = os.path.normpath(os.path.join(real_root, rel))
    parent, name = os.path.split(joined)
    target = os.path.join(_real_dir(parent), name)
    if os.path.islink(target):
        target = os.path.realpath(target)
    if target != real_root and not target.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return Path(target)


class ImageRef:
    """A Sample ``image_loader`` for an encoded image in a file or in memory.

    Calling it opens the image lazily (header only) after checking its pixel count, so decompression bombs
    are refused before any pixel is decoded. ``read_bytes()`` hands back the encoded bytes unchanged so
    converters copy images byte-for-byte.
    """

    __slots__ = ("sample_id", "path", "data", "max_pixels")

    def __init__(
        self,
        sample_id: str,
        *,
        path: str | os.PathLike | None = None,
        data: bytes | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if (path is None) == (data is None):
            raise ValueError("ImageRef needs exactly one of path= or data=")
        self.sample_id = sample_id
        self.path = Path(path) if path is not None else None
        self.data = data
        self.max_pixels = max_pixels

    @property
    def ext(self) -> str:
        """Extension of the encoded image ('png', 'jpg', ...), sniffed from the bytes when in memory."""
        if self.path is not None and self.path.suffix:
            ext = self.path.suffix.lower().lstrip(".")
            return {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)
        return sniff_ext(self.read_bytes()[:16]) or "bin"

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return self.path.read_bytes()
        except FileNotFoundError as exc:
            raise SampleError(self.sample_id, f"image not found: {self.path}", kind="missing_image") from exc

    def __call__(self) -> Image.Image:
        src = self.path if self.path is not None else io.BytesIO(self.data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(src)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise SampleError(self.sample_id, f"image not found: {self.path}", kind="missing_image") from exc
        except Image.DecompressionBombError as exc:
            raise SampleError(
                self.sample_id, f"image over the pixel limit ({exc})", kind="too_many_pixels"
            ) from exc
        except Exception as exc:
            raise SampleError(
                self.sample_id, f"unreadable image ({type(exc).__name__}: {exc})", kind="corrupt_image"
            ) from exc
        w, h = img.size
        if self.max_pixels is not None and w * h > self.max_pixels:
            img.close()
            raise SampleError(
                self.sample_id, f"image over the pixel limit: {w}x{h} = {w * h} > {self.max_pixels}"
            )
        if w == 0 or h == 0:
            raise SampleError(self.sample_id, f"unreadable image (size {w}x{h})", kind="corrupt_image")
        return img


def encode_image(img: Image.Image, fmt: str = "png") -> bytes:
    """Encode a decoded image for writing (used when a sample has no encoded source bytes)."""
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=92)
    else:
        img.save(buf, format=fmt.upper())
    return buf.getvalue()


def sample_image_bytes(sample) -> tuple[bytes, str]:  # noqa: ANN001 - Sample, avoids a cycle in type hints
    """(encoded bytes, extension) for a sample: source bytes when available, else PNG of the decoded image."""
    loader = sample.image_loader
    if isinstance(loader, ImageRef):
        data = loader.read_bytes()
        return data, sniff_ext(data[:16]) or loader.ext
    return encode_image(sample.image, "png"), "png"
