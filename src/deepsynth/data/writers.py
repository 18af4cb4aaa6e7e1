"""Write Samples as Parquet shards, WebDataset tar shards, a JSONL manifest + images, or a .gt.txt folder.

Images are copied byte-for-byte when the sample came from an encoded source (see ``ImageRef``); decoded-only
samples (synthetic ones) are written as PNG. Every writer is a context manager with ``write(sample)`` and
``close() -> list[Path]`` and holds at most one row group / one sample in memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from deepsynth.data.images import sample_image_bytes
from deepsynth.data.sample import Sample

TAR_MTIME = 1_700_000_000
WRITE_FORMATS = ("parquet", "webdataset", "jsonl", "folder")
_OWN_FILES = {
    "parquet": ("*.parquet",),
    "webdataset": ("*.tar",),
    "jsonl": ("manifest.jsonl", "images"),
    "folder": (),
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


class _Writer:
    fmt = ""

    def __init__(self, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        self.n = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = [p for pat in _OWN_FILES[self.fmt] for p in self.out_dir.glob(pat)]
        if self.fmt == "folder":
            existing = list(self.out_dir.glob("*.gt.txt"))
        if existing and not overwrite:
            raise FileExistsError(
                f"{self.out_dir} already holds {self.fmt} output ({existing[0].name}); use overwrite"
            )
        for p in existing:
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()

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
            + [("image", pa.binary()), ("image_ext", pa.string())]
            + [(k, pa.string()) for k in ("language", "subset", "level", "meta")]
        )
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self._writer = None
        self._in_shard = 0
        self.paths: list[Path] = []

    def write(self, sample: Sample) -> None:
        data, ext = sample_image_bytes(sample)
        row = sample_fields(sample)
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False)
        row.update(image=data, image_ext=ext)
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
            path = self.out_dir / f"part-{len(self.paths):05d}.parquet"
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


def open_writer(fmt: str, out_dir: str | Path, *, shard_size: int = 1000, overwrite: bool = False) -> _Writer:
    """A writer for one of WRITE_FORMATS; refuses to mix with earlier output in ``out_dir`` unless overwrite."""
    classes = {
        "parquet": ParquetShardWriter,
        "webdataset": WebDatasetShardWriter,
        "jsonl": JsonlWriter,
        "folder": FolderWriter,
    }
    if fmt not in classes:
        raise ValueError(f"unknown output format {fmt!r} (choose from {', '.join(WRITE_FORMATS)})")
    return classes[fmt](out_dir, shard_size=shard_size, overwrite=overwrite)
