"""The one sample type that flows through DeepSynth: image + text + id + language + subset + metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


class SampleError(ValueError):
    """A sample that cannot be used (unreadable image, empty text, ...). Always names the sample id."""

    def __init__(self, sample_id: str, reason: str, source: str = "", kind: str | None = None):
        self.sample_id = sample_id
        self.reason = reason
        self.source = source
        self.kind = kind  # one of deepsynth.data.report.SKIP_KINDS, or None to infer from the reason
        where = f" in {source}" if source else ""
        super().__init__(f"sample {sample_id!r}{where}: {reason}")


@dataclass
class Sample:
    """One OCR example.

    ``image`` is decoded lazily: sources hand over a loader so a stream stays at constant memory and a
    corrupt image surfaces as a :class:`SampleError` naming this sample when it is first touched.
    """

    id: str
    text: str
    image_loader: Callable[[], Image.Image] | None = field(default=None, repr=False)
    language: str | None = None
    subset: str | None = None
    level: str = "line"
    meta: dict[str, Any] = field(default_factory=dict)
    _image: Image.Image | None = field(default=None, repr=False)

    @classmethod
    def from_image(cls, id: str, image: Image.Image, text: str = "", **kw: Any) -> Sample:
        return cls(id=id, text=text, _image=image, **kw)

    @property
    def image(self) -> Image.Image:
        """The decoded RGB image; raises SampleError naming this sample if it cannot be read."""
        if self._image is None:
            if self.image_loader is None:
                raise SampleError(self.id, "no image")
            try:
                img = self.image_loader()
                img.load()
            except SampleError:
                raise
            except Exception as exc:  # PIL raises many types for bad files
                raise SampleError(self.id, f"unreadable image ({type(exc).__name__}: {exc})") from exc
            self._image = img if img.mode == "RGB" else img.convert("RGB")
        return self._image

    @property
    def doc_type(self) -> str | None:
        """The document type: the manifest key ``doc_type``, else the ``subset`` (None when neither is set)."""
        return doc_type_of(self.meta.get("doc_type"), self.subset)

    def release(self) -> None:
        """Drop the decoded image (keeps the loader) so long streams stay at constant memory."""
        if self.image_loader is not None:
            self._image = None


def doc_type_of(doc_type: object, subset: str | None) -> str | None:
    """The one rule for a document type: an explicit non-empty ``doc_type`` wins, else ``subset``."""
    if doc_type is not None and str(doc_type).strip():
        return str(doc_type)
    return subset or None
