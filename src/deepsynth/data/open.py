"""``open_sources``: one lazy stream of Samples over several sources, filtered, split and validated."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from deepsynth.data.filters import SampleFilter
from deepsynth.data.images import DEFAULT_MAX_PIXELS, ImageRef
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample, SampleError
from deepsynth.data.sources import get_reader
from deepsynth.data.spec import SourceSpec, parse_spec


def open_sources(
    specs: list[str] | str,
    *,
    filter: SampleFilter | None = None,
    report: DataReport | None = None,
    decode: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    require_text: bool = True,
    format: str | None = None,
    image_check: Callable[[Sample], SampleError | None] | None = None,
    absolute_images: bool = False,
) -> Iterator[Sample]:
    """Stream Samples from sources given as ``name=path[:image_root]`` or bare paths (format auto-detected).

    Specs are checked now (a missing path raises :class:`~deepsynth.data.spec.SourceError`); samples are
    read lazily. Bad samples are skipped and recorded in ``report`` (id, reason, source): invalid JSON lines,
    missing fields, empty texts (unless ``require_text=False``), image paths escaping the data root, missing
    images, and - with ``report`` given - duplicate ids. With ``decode=True`` each image is decoded while
    streaming, so unreadable images and images over ``max_pixels`` (checked from the header first) are caught
    here. Memory stays constant apart from an 8-byte digest per id for duplicate detection.
    ``image_check(sample)`` replaces that decoding step with answers computed elsewhere (``prepare --ray``
    decodes on a cluster first); it must return what :func:`image_problem` would.
    ``absolute_images=True`` accepts absolute image paths in JSONL manifests (for sources the user points a
    command at); relative paths must still stay inside the image root.
    """
    if isinstance(specs, str):
        specs = [specs]
    parsed = [
        dataclasses.replace(parse_spec(s, format=format), absolute_images=absolute_images) for s in specs
    ]
    check = image_check or (lambda s: image_problem(s, decode))
    return _stream(parsed, filter or SampleFilter(), report, check, max_pixels, require_text)


def open_user_sources(specs: list[str] | str, **kwargs: Any) -> Iterator[Sample]:
    """:func:`open_sources` for sources a user points a command at (``eval -d``, ``data prepare|stats``,
    ``train``'s ``data.train`` / ``data.eval``): their JSONL manifests may also name images by absolute path;
    relative paths must still stay inside the image root. What the server or the loop's inbox reads goes
    through :func:`open_sources`, which refuses absolute paths."""
    return open_sources(specs, absolute_images=True, **kwargs)


def image_problem(s: Sample, decode: bool) -> SampleError | None:
    """The expensive checks: a header read + decode with ``decode``, else whether the file exists."""
    loader = s.image_loader
    if decode:
        try:
            _ = s.image
        except SampleError as exc:
            return exc
    elif isinstance(loader, ImageRef) and loader.path is not None and not loader.path.is_file():
        return SampleError(s.id, f"image not found: {loader.path}", kind="missing_image")
    return None


def _stream(
    specs: list[SourceSpec],
    flt: SampleFilter,
    report: DataReport | None,
    image_check: Callable[[Sample], SampleError | None],
    max_pixels: int | None,
    require_text: bool,
) -> Iterator[Sample]:
    # cheap checks first (JSON, fields, path escape in the readers; empty text, duplicate id here), the image
    # last: a manifest of a million duplicate lines is rejected without decoding a million images
    sink = report if report is not None else DataReport()
    seen: dict[bytes, int] | None = {} if report is not None else None
    n = 0
    for spec_index, spec in enumerate(specs):
        for s in get_reader(spec.format)(spec, sink, max_pixels):
            if flt.limit is not None and n >= flt.limit:
                return
            if not flt.accepts(s):
                continue
            where = str(s.meta.get("origin", spec.label))
            if require_text and not s.text.strip():
                sink.skip(s.id, "empty text", where, "empty_text")
                continue
            digest = hashlib.blake2b(s.id.encode(), digest_size=8).digest() if seen is not None else b""
            if seen is not None and digest in seen:
                first = specs[seen[digest]].name
                sink.skip(s.id, f"duplicate id (first seen in {first})", where, "duplicate_id")
                continue
            problem = image_check(s)
            if problem is not None:
                sink.skip(s.id, problem.reason, where, problem.kind)
                continue
            if seen is not None:  # only good samples claim their id
                seen[digest] = spec_index
            if report is not None:
                report.count(s)
            n += 1
            yield s
