"""JSONL manifest reader (the format of ../shared/data): one JSON object per line, image paths relative to
the manifest's folder (or to the spec's image root)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from deepsynth.data.images import ImageRef, resolve_inside
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import make_sample
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
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                report.skip(
                    f"{spec.name}:line{lineno}",
                    f"invalid JSON on line {lineno}: not UTF-8 ({exc.reason})",
                    where,
                    "invalid_json",
                )
                continue
            except json.JSONDecodeError as exc:
                report.skip(f"{spec.name}:line{lineno}", f"invalid JSON on line {lineno}: {exc.msg}", where)
                continue
            if not isinstance(row, dict):
                report.skip(
                    f"{spec.name}:line{lineno}", f"invalid JSON on line {lineno}: not an object", where
                )
                continue
            sample_id = str(row.get("id") or f"{spec.name}:line{lineno}")
            image = next((row[k] for k in IMAGE_KEYS if row.get(k)), None)
            if image is None or not isinstance(image, str):
                report.skip(sample_id, f"missing field 'image' on line {lineno}", where, "missing_field")
                continue
            if not isinstance(row.get("text"), str):
                report.skip(
                    sample_id, f"missing field 'text' (a string) on line {lineno}", where, "missing_field"
                )
                continue
            path = resolve_inside(root, image)
            if path is None:
                report.skip(
                    sample_id, f"image path {image!r} escapes the data root {root}", where, "path_escape"
                )
                continue
            row = {k: v for k, v in row.items() if k not in IMAGE_KEYS}
            row["image_path"] = image
            loader = ImageRef(sample_id, path=path, max_pixels=max_pixels)
            yield make_sample(row, sample_id=sample_id, loader=loader, dataset=spec.name, origin=where)
