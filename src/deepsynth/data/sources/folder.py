"""Folder reader: images with ``<stem>.gt.txt`` ground-truth sidecars (the OCR-D / Kraken convention)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from deepsynth.data.images import ImageRef, resolve_inside
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import RowError, make_sample
from deepsynth.data.spec import IMAGE_EXTS, SourceSpec

SIDECAR = ".gt.txt"


def read(spec: SourceSpec, report: DataReport, max_pixels: int | None) -> Iterator[Sample]:
    root = spec.path
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        images = {}
        sidecars = set()
        for f in sorted(filenames):
            if f.endswith(SIDECAR):
                sidecars.add(f[: -len(SIDECAR)])
            elif Path(f).suffix.lower() in IMAGE_EXTS:
                images.setdefault(Path(f).stem, f)
        rel_dir = d.relative_to(root)
        for stem in sorted(set(images) | sidecars):
            sample_id = (rel_dir / stem).as_posix()
            if stem not in images:
                report.skip(
                    sample_id, "image not found for sidecar", str(d / (stem + SIDECAR)), "missing_image"
                )
                continue
            img_path = d / images[stem]
            if stem not in sidecars:
                report.skip(
                    sample_id, f"missing field: no {stem}{SIDECAR} sidecar", str(img_path), "missing_field"
                )
                continue
            if resolve_inside(root, str(img_path.relative_to(root))) is None:
                report.skip(
                    sample_id, f"image {img_path} escapes the data root {root}", str(img_path), "path_escape"
                )
                continue
            try:
                text = (d / (stem + SIDECAR)).read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                report.skip(
                    sample_id, f"missing field: unreadable sidecar ({exc})", str(img_path), "missing_field"
                )
                continue
            row = {
                "text": text,
                "subset": rel_dir.as_posix() if rel_dir.parts else spec.name,
                "image_path": str(img_path.relative_to(root)),
            }
            loader = ImageRef(sample_id, path=img_path, max_pixels=max_pixels)
            try:
                sample = make_sample(
                    row, sample_id=sample_id, loader=loader, dataset=spec.name, origin=str(img_path)
                )
            except RowError as exc:
                report.skip(sample_id, exc.reason, str(img_path), exc.kind)
                continue
            yield sample
