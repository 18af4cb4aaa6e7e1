"""Parquet / WebDataset / JSONL / folder / HF datasets writers and readers round-trip; HF save_to_disk reader."""

from __future__ import annotations

import hashlib
import tarfile

import pytest
from PIL import Image

from deepsynth.data import DataReport, Sample, SampleFilter, open_sources
from deepsynth.data.writers import open_writer


def _real(shared_data, n=25):
    return list(open_sources([str(shared_data / "gt4histocr_dta19_lines")], filter=SampleFilter(limit=n)))


def _digest(s: Sample) -> str:
    return hashlib.sha256(s.image_loader.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["parquet", "webdataset", "jsonl", "folder", "hf"])
def test_round_trip_keeps_every_sample_and_image_bytes(shared_data, tmp_path, fmt):
    src = _real(shared_data)
    with open_writer(fmt, tmp_path / fmt, shard_size=10) as w:
        for s in src:
            w.write(s)
    report = DataReport()
    back = list(open_sources([str(tmp_path / fmt)], report=report, decode=True))
    assert report.n_skipped == 0 and len(back) == len(src)
    assert [s.text for s in back] == [s.text for s in src]
    assert [_digest(s) for s in back] == [_digest(s) for s in src]  # copied byte-for-byte, not re-encoded
    if fmt != "folder":  # the .gt.txt convention carries only the text
        assert [s.id for s in back] == [s.id for s in src]
        assert [(s.language, s.subset, s.level) for s in back] == [
            (s.language, s.subset, s.level) for s in src
        ]
        assert (
            back[0].meta["year"] == src[0].meta["year"]
            and back[0].meta["dataset"] == "gt4histocr_dta19_lines"
        )
    assert back[3].image.size == src[3].image.size


def test_shard_size_splits_output(shared_data, tmp_path):
    src = _real(shared_data)
    with open_writer("parquet", tmp_path / "pq", shard_size=10) as w:
        for s in src:
            w.write(s)
    with open_writer("webdataset", tmp_path / "wds", shard_size=10) as w:
        for s in src:
            w.write(s)
    parts = sorted((tmp_path / "pq").glob("*.parquet"))
    shards = sorted((tmp_path / "wds").glob("*.tar"))
    assert len(parts) == len(shards) == -(-len(src) // 10)
    with tarfile.open(shards[0]) as tf:
        names = tf.getnames()
    assert len(names) == 3 * 10 and {n.rsplit(".", 1)[1] for n in names} == {"png", "txt", "json"}
    # a single shard and a brace pattern are sources too
    assert len(list(open_sources([str(shards[1])]))) == 10
    pattern = str(tmp_path / "wds" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    assert len(list(open_sources([pattern]))) == len(src)


def test_writer_refuses_to_mix_with_old_output(tmp_path):
    s = Sample.from_image("a", Image.new("RGB", (8, 8)), "x")
    with open_writer("parquet", tmp_path) as w:
        w.write(s)
    with pytest.raises(FileExistsError, match="parquet"):
        open_writer("parquet", tmp_path)
    with open_writer("parquet", tmp_path, overwrite=True) as w:
        w.write(s)
        w.write(Sample.from_image("b", Image.new("RGB", (8, 8)), "y"))
    assert [x.id for x in open_sources([str(tmp_path)])] == ["a", "b"]


def test_decoded_only_samples_are_written_as_png(tmp_path):
    img = Image.new("RGB", (30, 10), (10, 200, 30))
    with open_writer("webdataset", tmp_path) as w:
        w.write(Sample.from_image("syn-1", img, "hello", language="en"))
    (back,) = list(open_sources([str(tmp_path)]))
    assert back.image_loader.read_bytes().startswith(b"\x89PNG")
    assert back.image.getpixel((5, 5)) == (10, 200, 30) and back.language == "en"


def test_streaming_is_lazy(shared_data, tmp_path):
    with open_writer("parquet", tmp_path, shard_size=100) as w:
        for s in _real(shared_data):
            w.write(s)
    stream = open_sources([str(tmp_path)])
    first = next(iter(stream))
    assert first._image is None  # no pixel decoded until .image is touched


def test_hf_save_to_disk_reader(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [Image.new("RGB", (20 + i, 10), "white") for i in range(4)]
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "text": [f"t{i}" for i in range(4)], "language": ["de"] * 4, "page": [1, 1, 2, 2]}
    ).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select([3])}).save_to_disk(tmp_path / "hf")
    back = list(open_sources([f"h={tmp_path / 'hf'}"], decode=True))
    assert sorted(s.text for s in back) == ["t0", "t1", "t2", "t3"]
    by_text = {s.text: s for s in back}
    assert by_text["t3"].image.size == (23, 10) and by_text["t3"].meta["hf_split"] == "test"
    assert by_text["t1"].language == "de" and by_text["t1"].meta["page"] == 1


def test_parquet_with_hf_image_struct(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("L", (12, 7)).save(buf, format="PNG")
    table = pa.table(
        {
            "image": [{"bytes": buf.getvalue(), "path": None}, {"bytes": None, "path": "../outside.png"}],
            "text": ["ok", "bad"],
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    report = DataReport()
    back = list(open_sources([str(tmp_path / "x.parquet")], report=report, decode=True))
    assert [s.text for s in back] == ["ok"] and back[0].image.size == (12, 7)
    assert [s["kind"] for s in report.skipped] == ["path_escape"]


def test_hf_writer_output_loads_with_datasets_and_keeps_no_temporary_parts(tmp_path):
    datasets = pytest.importorskip("datasets")
    samples = [
        Sample.from_image(f"syn-{i}", Image.new("RGB", (30 + i, 12), "white"), f"zeile {i}", language="de")
        for i in range(3)
    ]
    with open_writer("hf", tmp_path / "hf") as w:
        for s in samples:
            w.write(s)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds["text"] == ["zeile 0", "zeile 1", "zeile 2"] and ds["language"] == ["de"] * 3
    assert isinstance(ds.features["image"], datasets.Image) and ds[2]["image"].size == (32, 12)
    assert not (tmp_path / "hf" / ".hf-parts").exists()
    with pytest.raises(FileExistsError, match="hf"):
        open_writer("hf", tmp_path / "hf")
    with open_writer("hf", tmp_path / "hf", overwrite=True) as w:
        w.write(samples[0])
    assert datasets.load_from_disk(str(tmp_path / "hf"))["id"] == ["syn-0"]
