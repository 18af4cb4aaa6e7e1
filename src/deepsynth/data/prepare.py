"""``prepare``: convert sources to Parquet / WebDataset shards while validating every sample.

Cheap checks come first (JSON, fields, paths, empty text, duplicate ids), then each image is decoded once
(after a header check of its pixel count); bad samples are listed by id (and line) and skipped, and the report
(JSON + printed summary) says what was written. The number of samples written always equals the number of
good samples counted, and the output appears complete (with its report) or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepsynth.data.filters import SampleFilter
from deepsynth.data.images import DEFAULT_MAX_PIXELS
from deepsynth.data.open import open_user_sources
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample, SampleError
from deepsynth.data.writers import staged_writer

REPORT_NAME = "report.json"


def prepare(
    specs: list[str],
    out_dir: str | Path,
    *,
    to: str = "parquet",
    shard_size: int = 1000,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    filter: SampleFilter | None = None,
    overwrite: bool = False,
    progress: bool = True,
    image_check: Callable[[Sample], SampleError | None] | None = None,
) -> tuple[DataReport, dict[str, Any]]:
    """Validate and convert; returns the report and the run info written with it to ``out_dir/report.json``.
    ``image_check``: see :func:`~deepsynth.data.open.open_sources` (decoding done elsewhere)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    report = DataReport()
    stream = open_user_sources(specs, filter=filter, report=report, decode=True, max_pixels=max_pixels,
                               image_check=image_check)  # fmt: skip
    t0 = time.perf_counter()
    with staged_writer(to, out_dir, shard_size=shard_size, overwrite=overwrite) as writer:
        for sample in tqdm(stream, desc=f"prepare -> {to}", unit="sample", disable=not progress):
            writer.write(sample)
            sample.release()
        files = writer.close()
        if writer.n != report.n_ok:  # never lose a good sample silently
            raise RuntimeError(f"wrote {writer.n} samples but counted {report.n_ok} good ones")
        info = {
            "sources": list(specs),
            "format": to,
            "out_dir": str(out_dir),
            "shard_size": shard_size,
            "max_pixels": max_pixels,
            "files": [p.name for p in files],
            "n_written": writer.n,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        report.write_json(writer.out_dir / REPORT_NAME, **info)
    return report, info
