"""JSONL manifest reader (the format of ../shared/data): one JSON object per line, image paths relative to
the manifest's folder (or to the spec's image root)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from deepsynth.data.images import ImageRef, resolve_inside
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import RowError, loads_row, make_sample
from deepsynth.data.spec import SourceSpec

IMAGE_KEYS = ("image", "image_path", "file_name")


def read(spec: SourceSpec, report: DataReport, max_pixels: int | None) -> Iterator[Sample]:
    manifest = spec.path / "manifest.jsonl" if spec.path.is_dir() else spec.path
    root = spec.image_root or manifest.parent
    with manifest.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{manifest}:{lineno}"
            sample_id = f"{spec.name}:line{lineno}"
            try:
                row = loads_row(raw)
                sample_id = str(row.get("id") or sample_id)
                sample = _sample(row, sample_id, spec, root, where, max_pixels)
            except RowError as exc:
                report.skip(sample_id, f"{exc.reason} on line {lineno}", where, exc.kind)
                continue
            yield sample


def _sample(row: dict, sample_id: str, spec: SourceSpec, root, where: str, max_pixels: int | None) -> Sample:  # noqa: ANN001
    image = next((row[k] for k in IMAGE_KEYS if row.get(k)), None)
    if image is None or not isinstance(image, str):
        raise RowError("missing field 'image' (a path)", "missing_field")
    if not isinstance(row.get("text"), str):
        raise RowError("missing field 'text' (a string)", "missing_field")
    path = Path(image) if spec.absolute_images and os.path.isabs(image) else resolve_inside(root, image)
    if path is None:
        raise RowError(f"image path {image!r} escapes the data root {root}", "path_escape")
    row = {k: v for k, v in row.items() if k not in IMAGE_KEYS}
    row["image_path"] = image
    loader = ImageRef(sample_id, path=path, max_pixels=max_pixels)
    return make_sample(row, sample_id=sample_id, loader=loader, dataset=spec.name, origin=where)
