"""Hugging Face ``datasets`` reader for ``save_to_disk`` folders (a Dataset or a DatasetDict of splits).

Image columns are read undecoded (``Image(decode=False)``) so images stay lazy; the first string column among
``text``, ``ground_truth``, ``transcription``, ``label`` is the text."""

from __future__ import annotations

from collections.abc import Iterator

from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import RowError, make_sample
from deepsynth.data.sources.parquet import image_loader
from deepsynth.data.spec import SourceError, SourceSpec

TEXT_COLUMNS = ("text", "ground_truth", "transcription", "label")
IMAGE_COLUMNS = ("image", "img", "image_path")


def read(spec: SourceSpec, report: DataReport, max_pixels: int | None) -> Iterator[Sample]:
    import datasets

    loaded = datasets.load_from_disk(str(spec.path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    root = spec.image_root or spec.path
    for split_name, ds in splits:
        cols = ds.column_names
        text_col = next((c for c in TEXT_COLUMNS if c in cols), None)
        image_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
        if text_col is None or image_col is None:
            raise SourceError(
                f"{spec.path}: needs a text column ({', '.join(TEXT_COLUMNS)}) and an image column "
                f"({', '.join(IMAGE_COLUMNS)}); found {cols}"
            )
        if isinstance(ds.features[image_col], datasets.Image):
            ds = ds.cast_column(image_col, datasets.Image(decode=False))
        for i, row in enumerate(ds):
            where = f"{spec.path}[{split_name or 'dataset'}][{i}]"
            sample_id = str(row.get("id") or f"{spec.name}:{split_name or ''}:{i}")
            text = row.get(text_col)
            if not isinstance(text, str):
                report.skip(sample_id, f"missing field '{text_col}' (a string)", where, "missing_field")
                continue
            loader = image_loader(row.get(image_col), sample_id, root, max_pixels)
            if isinstance(loader, str):
                report.skip(sample_id, loader, where)
                continue
            fields = {k: v for k, v in row.items() if k not in (text_col, image_col)}
            if split_name is not None:
                fields["hf_split"] = split_name
            try:
                sample = make_sample(
                    {**fields, "text": text},
                    sample_id=sample_id,
                    loader=loader,
                    dataset=spec.name,
                    origin=where,
                )
            except RowError as exc:
                report.skip(sample_id, exc.reason, where, exc.kind)
                continue
            yield sample
