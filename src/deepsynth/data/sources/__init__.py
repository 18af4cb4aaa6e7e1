"""Readers for each source format. Each ``read(spec, report, max_pixels)`` yields Samples lazily and
reports rows it cannot turn into a Sample (bad JSON, missing fields, paths escaping the data root)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.spec import SourceSpec

Reader = Callable[[SourceSpec, DataReport, "int | None"], Iterator[Sample]]


def get_reader(fmt: str) -> Reader:
    """The reader function for a format name (imports only that format's dependencies)."""
    if fmt == "jsonl":
        from deepsynth.data.sources.jsonl import read
    elif fmt == "folder":
        from deepsynth.data.sources.folder import read
    elif fmt == "parquet":
        from deepsynth.data.sources.parquet import read
    elif fmt == "webdataset":
        from deepsynth.data.sources.webdataset import read
    elif fmt == "hf":
        from deepsynth.data.sources.hf import read
    else:
        raise ValueError(f"unknown source format {fmt!r}")
    return read
