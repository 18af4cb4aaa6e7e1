"""WebDataset reader (the ``webdataset`` library): tar shards holding ``KEY.<img>``, ``KEY.txt`` and
``KEY.json`` (id, language, subset, level, meta) per sample."""

from __future__ import annotations

import json
from collections.abc import Iterator

from deepsynth.data.images import ImageRef
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import make_sample
from deepsynth.data.spec import IMAGE_EXTS, SourceSpec

IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTS)


def shard_urls(spec: SourceSpec) -> list[str] | str:
    if spec.path.is_dir():
        return [str(p) for p in sorted(spec.path.glob("*.tar"))]
    return str(spec.path)  # a single shard or a brace pattern like shard-{000000..000009}.tar


def read(spec: SourceSpec, report: DataReport, max_pixels: int | None) -> Iterator[Sample]:
    import webdataset as wds

    def on_error(exn: Exception) -> bool:
        report.skip(spec.name, f"unreadable tar shard ({type(exn).__name__}: {exn})", spec.label, "other")
        return True

    urls = shard_urls(spec)
    if not urls:
        return
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=on_error)
    for item in ds:
        key, url = item.get("__key__", "?"), item.get("__url__", spec.label)
        where = f"{url}#{key}"
        info = {}
        if "json" in item:
            try:
                info = json.loads(item["json"])
            except ValueError as exc:
                report.skip(key, f"invalid JSON in {key}.json: {exc}", where, "invalid_json")
                continue
        sample_id = str(info.get("id") or key)
        text = item["txt"].decode("utf-8") if "txt" in item else info.get("text")
        if not isinstance(text, str):
            report.skip(sample_id, f"missing field 'text' (no {key}.txt)", where, "missing_field")
            continue
        ext = next((k for k in IMAGE_KEYS if k in item), None)
        if ext is None:
            report.skip(
                sample_id, f"missing field 'image' (no image member for {key})", where, "missing_field"
            )
            continue
        loader = ImageRef(sample_id, data=item[ext], max_pixels=max_pixels)
        yield make_sample(
            {**info, "text": text}, sample_id=sample_id, loader=loader, dataset=spec.name, origin=where
        )
