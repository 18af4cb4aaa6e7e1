"""WebDataset reader (the ``webdataset`` library): tar shards holding ``KEY.<img>``, ``KEY.txt`` and
``KEY.json`` (id, language, subset, level, meta) per sample."""

from __future__ import annotations

from collections.abc import Iterator

from deepsynth.data.images import ImageRef
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample
from deepsynth.data.sources.common import RowError, loads_row, make_sample
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
        try:
            info = loads_row(item["json"]) if "json" in item else {}
            sample_id = str(info.get("id") or key)
        except RowError as exc:
            report.skip(key, f"{exc.reason} in {key}.json", where, exc.kind)
            continue
        try:
            sample = _sample(item, info, key, sample_id, spec, where, max_pixels)
        except RowError as exc:
            report.skip(sample_id, exc.reason, where, exc.kind)
            continue
        yield sample


def _sample(
    item: dict, info: dict, key: str, sample_id: str, spec: SourceSpec, where: str, max_pixels
) -> Sample:  # noqa: ANN001
    if "txt" in item:
        try:
            text = item["txt"].decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise RowError(
                f"invalid field 'text': {key}.txt is not UTF-8 ({exc.reason})", "invalid_field"
            ) from None
    else:
        text = info.get("text")
    if not isinstance(text, str):
        raise RowError(f"missing field 'text' (no {key}.txt)", "missing_field")
    ext = next((k for k in IMAGE_KEYS if k in item), None)
    if ext is None:
        raise RowError(f"missing field 'image' (no image member for {key})", "missing_field")
    loader = ImageRef(sample_id, data=item[ext], max_pixels=max_pixels)
    return make_sample(
        {**info, "text": text}, sample_id=sample_id, loader=loader, dataset=spec.name, origin=where
    )
