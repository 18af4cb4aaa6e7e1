"""Parquet reader: one row per sample with the encoded image in an ``image`` column (bytes, or the Hugging Face
``{bytes, path}`` struct), read in small record batches so memory stays constant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from deepsynth.data.images import ImageRef, resolve_inside
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import RowError, make_sample
from deepsynth.data.spec import SourceSpec

BATCH_ROWS = 32


def parquet_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def image_loader(value, sample_id: str, root: Path, max_pixels: int | None) -> ImageRef | str:  # noqa: ANN001
    """An ImageRef for an image cell (bytes, {bytes, path} struct or a relative path), or an error string."""
    data, rel = value, None
    if isinstance(value, dict):
        data, rel = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, rel = None, value
    if data:
        return ImageRef(sample_id, data=bytes(data), max_pixels=max_pixels)
    if rel:
        path = resolve_inside(root, rel)
        if path is None:
            return f"image path {rel!r} escapes the data root {root}"
        return ImageRef(sample_id, path=path, max_pixels=max_pixels)
    return "missing field 'image' (no bytes and no path)"


def read(spec: SourceSpec, report: DataReport, max_pixels: int | None) -> Iterator[Sample]:
    import pyarrow.parquet as pq

    for file in parquet_files(spec.path):
        root = spec.image_root or file.parent
        try:
            pf = pq.ParquetFile(file)
            if "image" not in pf.schema_arrow.names or "text" not in pf.schema_arrow.names:
                report.skip(
                    file.name,
                    f"missing field: needs 'image' and 'text' columns, has {pf.schema_arrow.names}",
                    str(file),
                    "missing_field",
                )
                continue
            batches = pf.iter_batches(batch_size=BATCH_ROWS)
            row_index = 0
            for batch in batches:
                for row in batch.to_pylist():
                    where = f"{file}#row{row_index}"
                    sample_id = str(row.get("id") or f"{spec.name}:{file.stem}:{row_index}")
                    row_index += 1
                    if not isinstance(row.get("text"), str):
                        report.skip(sample_id, "missing field 'text'", where, "missing_field")
                        continue
                    loader = image_loader(row.get("image"), sample_id, root, max_pixels)
                    if isinstance(loader, str):
                        report.skip(sample_id, loader, where)
                        continue
                    row.pop("image_ext", None)
                    try:
                        sample = make_sample(
                            row, sample_id=sample_id, loader=loader, dataset=spec.name, origin=where
                        )
                    except RowError as exc:
                        report.skip(sample_id, exc.reason, where, exc.kind)
                        continue
                    yield sample
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for corrupt files
            report.skip(
                file.name, f"unreadable parquet file ({type(exc).__name__}: {exc})", str(file), "other"
            )
