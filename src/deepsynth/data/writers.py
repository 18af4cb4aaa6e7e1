"""Write Samples as Parquet shards, WebDataset tar shards, a JSONL manifest + images, a .gt.txt folder, or a
Hugging Face ``datasets`` folder (``save_to_disk`` layout, ``load_from_disk`` reads it).

Images are copied byte-for-byte when the sample came from an encoded source (see ``ImageRef``); decoded-only
samples (synthetic ones) are written as PNG. Every writer is a context manager with ``write(sample)`` and
``close() -> list[Path]`` and holds at most one row group / one sample in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepsynth import atomic
from deepsynth.data.images import sample_image_bytes
from deepsynth.data.sample import Sample

TAR_MTIME = 1_700_000_000
WRITE_FORMATS = ("parquet", "webdataset", "jsonl", "folder", "hf")
_OWN_FILES = {
    "parquet": ("*.parquet",),
    "webdataset": ("*.tar",),
    "jsonl": ("manifest.jsonl", "images"),
    "folder": (),
    "hf": ("data-*.arrow", "state.json", "dataset_info.json", ".hf-parts"),
}


def sample_fields(sample: Sample) -> dict[str, Any]:
    """The non-image fields of a sample as a JSON-able dict (``meta`` minus the reader's ``origin``)."""
    meta = {k: v for k, v in sample.meta.items() if k not in ("origin", "image_path")}
    return {
        "id": sample.id,
        "text": sample.text,
        "language": sample.language,
        "subset": sample.subset,
        "level": sample.level,
        "meta": meta,
    }


def safe_name(sample_id: str) -> str:
    """A file-name-safe, collision-resistant stem for a sample id."""
    stem = re.sub(r"[^\w\-]+", "_", sample_id).strip("_")[:120] or "sample"
    return stem


def _existing_output(fmt: str, out_dir: Path) -> list[Path]:
    if fmt == "folder":
        return list(out_dir.glob("*.gt.txt"))
    return [p for pat in _OWN_FILES[fmt] for p in out_dir.glob(pat)]


def _clear_output(fmt: str, out_dir: Path, overwrite: bool, *, dry_run: bool = False) -> None:
    """Remove earlier ``fmt`` output from ``out_dir``; FileExistsError when there is some and not overwrite."""
    existing = _existing_output(fmt, out_dir) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {fmt} output ({existing[0].name}); use overwrite")
    for p in [] if dry_run else existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


class _Writer:
    fmt = ""

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.n = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _clear_output(self.fmt, self.out_dir, overwrite)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, sample: Sample) -> None:
        raise NotImplementedError

    def close(self) -> list[Path]:
        raise NotImplementedError


class ParquetShardWriter(_Writer):
    """``part-NNNNN.parquet`` files of ``shard_size`` rows; row groups flushed every 256 rows or 64 MB."""

    fmt = "parquet"
    GROUP_ROWS = 256
    GROUP_BYTES = 64 << 20

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False):
        super().__init__(out_dir, shard_size=shard_size, overwrite=overwrite)
        import pyarrow as pa

        self._pa = pa
        self.schema = pa.schema(
            [(k, pa.string()) for k in ("id", "text")]
            + [("image", self.image_type()), ("image_ext", pa.string())]
            + [(k, pa.string()) for k in ("language", "subset", "level", "meta")]
        )
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self._writer = None
        self._in_shard = 0
        self.paths: list[Path] = []
        self.parts_dir = self.out_dir

    def image_type(self) -> Any:
        return self._pa.binary()

    def image_value(self, data: bytes, ext: str) -> Any:
        return data

    def write(self, sample: Sample) -> None:
        data, ext = sample_image_bytes(sample)
        row = sample_fields(sample)
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False)
        row.update(image=self.image_value(data, ext), image_ext=ext)
        self._rows.append(row)
        self._bytes += len(data)
        self.n += 1
        self._in_shard += 1
        if (
            len(self._rows) >= self.GROUP_ROWS
            or self._bytes >= self.GROUP_BYTES
            or self._in_shard >= self.shard_size
        ):
            self._flush()
        if self._in_shard >= self.shard_size:
            self._close_shard()

    def _flush(self) -> None:
        if not self._rows:
            return
        import pyarrow.parquet as pq

        if self._writer is None:
            path = self.parts_dir / f"part-{len(self.paths):05d}.parquet"
            self.paths.append(path)
            self._writer = pq.ParquetWriter(path, self.schema)
        self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows, self._bytes = [], 0

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._in_shard = 0

    def close(self) -> list[Path]:
        self._close_shard()
        return self.paths


class WebDatasetShardWriter(_Writer):
    """``shard-NNNNNN.tar`` files of ``shard_size`` samples written with ``webdataset.ShardWriter``."""

    fmt = "webdataset"

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False):
        super().__init__(out_dir, shard_size=shard_size, overwrite=overwrite)
        import webdataset as wds

        # an integer mtime keeps tar members free of PAX headers (a float mtime adds one per member, which
        # doubles header parsing on read) and makes shards reproducible
        self._sink = wds.ShardWriter(
            str(self.out_dir / "shard-%06d.tar"), maxcount=shard_size, verbose=0, mtime=TAR_MTIME
        )
        self._closed = False

    def write(self, sample: Sample) -> None:
        data, ext = sample_image_bytes(sample)
        info = sample_fields(sample)
        text = info.pop("text")
        # keys carry no dots (webdataset splits the extension at the first dot); the id lives in KEY.json
        self._sink.write({"__key__": f"{self.n:09d}", ext: data, "txt": text, "json": info})
        self.n += 1

    def close(self) -> list[Path]:
        if not self._closed:
            self._sink.close()
            self._closed = True
        return sorted(self.out_dir.glob("shard-*.tar"))


class JsonlWriter(_Writer):
    """``manifest.jsonl`` + ``images/`` in the format of ../shared/data (paths relative to the manifest)."""

    fmt = "jsonl"

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False):
        super().__init__(out_dir, shard_size=shard_size, overwrite=overwrite)
        (self.out_dir / "images").mkdir(exist_ok=True)
        self._fh = (self.out_dir / "manifest.jsonl").open("w", encoding="utf-8")

    def write(self, sample: Sample) -> None:
        data, ext = sample_image_bytes(sample)
        rel = f"images/{self.n:09d}_{safe_name(sample.id)}.{ext}"
        (self.out_dir / rel).write_bytes(data)
        fields = sample_fields(sample)
        row = {k: fields[k] for k in ("id", "text", "language", "subset", "level")}
        row["image"] = rel
        row.update({k: v for k, v in fields["meta"].items() if k not in row})
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.n += 1

    def close(self) -> list[Path]:
        if not self._fh.closed:
            self._fh.close()
        return [self.out_dir / "manifest.jsonl"]


class FolderWriter(_Writer):
    """Images with ``<stem>.gt.txt`` sidecars (language/subset are not kept by this format)."""

    fmt = "folder"

    def write(self, sample: Sample) -> None:
        data, ext = sample_image_bytes(sample)
        stem = f"{self.n:09d}_{safe_name(sample.id)}"
        (self.out_dir / f"{stem}.{ext}").write_bytes(data)
        (self.out_dir / f"{stem}.gt.txt").write_text(sample.text + "\n", encoding="utf-8")
        self.n += 1

    def close(self) -> list[Path]:
        return [self.out_dir]


class HFDatasetWriter(ParquetShardWriter):
    """A ``datasets`` folder (``save_to_disk``): streamed into Parquet parts first (bounded memory), turned into
    Arrow shards by ``datasets`` on close. ``image`` is a ``datasets.Image`` column holding the original bytes."""

    fmt = "hf"

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False):
        super().__init__(out_dir, shard_size=shard_size, overwrite=overwrite)
        self.parts_dir = self.out_dir / ".hf-parts"
        self.parts_dir.mkdir()
        self._saved: list[Path] | None = None

    def image_type(self) -> Any:
        return self._pa.struct([("bytes", self._pa.binary()), ("path", self._pa.string())])

    def image_value(self, data: bytes, ext: str) -> Any:
        return {"bytes": data, "path": f"{self.n:09d}.{ext}"}

    def close(self) -> list[Path]:
        if self._saved is not None:
            return self._saved
        import datasets

        parts = super().close()
        features = datasets.Features(
            {
                "id": datasets.Value("string"),
                "text": datasets.Value("string"),
                "image": datasets.Image(),
                **{k: datasets.Value("string") for k in ("image_ext", "language", "subset", "level", "meta")},
            }
        )
        if parts:
            ds = datasets.Dataset.from_parquet(
                [str(p) for p in parts], features=features, cache_dir=str(self.parts_dir / "cache")
            )
        else:
            ds = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        ds.save_to_disk(str(self.out_dir), max_shard_size="500MB")
        del ds
        shutil.rmtree(self.parts_dir)
        self._saved = sorted(self.out_dir.glob("data-*.arrow"))
        return self._saved


def open_writer(fmt: str, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False) -> _Writer:
    """A writer for one of WRITE_FORMATS; refuses to mix with earlier output in ``out_dir`` unless overwrite."""
    classes = {
        "parquet": ParquetShardWriter,
        "webdataset": WebDatasetShardWriter,
        "jsonl": JsonlWriter,
        "folder": FolderWriter,
        "hf": HFDatasetWriter,
    }
    if fmt not in classes:
        raise ValueError(f"unknown output format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    return classes[fmt](out_dir, shard_size=shard_size, overwrite=overwrite)


@contextmanager
def staged_writer(
    fmt: str, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False
) -> Iterator[_Writer]:
    """A writer whose output appears in ``out_dir`` complete or not at all.

    It writes into a temporary sibling of ``out_dir``; when the ``with`` body ends normally the writer is
    closed and its files (plus anything else the body put in ``writer.out_dir``, e.g. a report) are renamed
    into ``out_dir`` - one rename when ``out_dir`` does not exist yet. On any error, or a kill, the temporary
    directory goes (a later run removes what a kill left) and ``out_dir`` is untouched.
    """
    out_dir = Path(out_dir)
    _clear_output(fmt, out_dir, overwrite, dry_run=True)  # refuse before doing any work
    atomic.clean_stale(out_dir.parent, out_dir.name)
    stage = atomic.staging_dir(out_dir)
    try:
        writer = open_writer(fmt, stage, shard_size=shard_size)
        yield writer
        writer.close()
        if not out_dir.exists():
            atomic.replace_dir(stage, out_dir)
            return
        _clear_output(fmt, out_dir, overwrite)
        for p in sorted(stage.iterdir()):
            target = out_dir / p.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(p, target)
        atomic.discard(stage)
    except BaseException:
        atomic.discard(stage)
        raise
