"""prepare / stats on a corpus of bad inputs the test builds: every bad sample is named, every good one kept."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.data import DataReport, open_sources
from deepsynth.data.prepare import prepare


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (a decompression bomb's header), with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture()
def bad_corpus(tmp_path):
    root = tmp_path / "corpus"
    img = root / "images"
    img.mkdir(parents=True)
    Image.new("RGB", (60, 20), "white").save(img / "good1.png")
    buf = io.BytesIO()
    Image.effect_noise((200, 80), 40).convert("RGB").save(buf, format="JPEG", quality=90)
    (img / "good2.jpg").write_bytes(buf.getvalue())
    (img / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "zero.png").write_bytes(b"")
    (img / "text.png").write_text("this is not an image\n")
    (img / "huge.png").write_bytes(_png_header_only(100_000, 100_000))
    (img / "big.png").write_bytes(_png_header_only(10_000, 10_000))  # 1e8 px: over the default 89.5 Mpx
    rows = [
        {"id": "good1", "image": "images/good1.png", "text": "hello", "language": "en", "subset": "a"},
        {"id": "good2", "image": "images/good2.jpg", "text": "world", "language": "fr", "subset": "b"},
        {"id": "truncated", "image": "images/truncated.jpg", "text": "x"},
        {"id": "zero", "image": "images/zero.png", "text": "x"},
        {"id": "textpng", "image": "images/text.png", "text": "x"},
        {"id": "missing", "image": "images/nope.png", "text": "x"},
        {"id": "escape", "image": "../../etc/passwd", "text": "x"},
        {"id": "absolute", "image": "/etc/passwd", "text": "x"},
        {"id": "huge", "image": "images/huge.png", "text": "x"},
        {"id": "big", "image": "images/big.png", "text": "x"},
        {"id": "empty", "image": "images/good1.png", "text": "   "},
        {"id": "good1", "image": "images/good2.jpg", "text": "duplicate"},
        {"id": "notext", "image": "images/good1.png"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(4, '{"id": "broken", "image": ')  # invalid JSON on line 5
    data = (
        "\n".join(lines) + "\n"
    ).encode() + b'{"id": "latin1", "image": "images/good1.png", "text": "caf\xe9"}\n'
    (root / "manifest.jsonl").write_bytes(data)  # the last line is Latin-1, not UTF-8
    return root


EXPECTED_KINDS = {
    "truncated": "corrupt_image",
    "zero": "corrupt_image",
    "textpng": "corrupt_image",
    "missing": "missing_image",
    "escape": "path_escape",
    "absolute": "corrupt_image",  # a user's manifest may name images by absolute path: read, not an image
    "huge": "too_many_pixels",
    "big": "too_many_pixels",
    "empty": "empty_text",
    "good1": "duplicate_id",
    "notext": "missing_field",
    "bad:line5": "invalid_json",
    "bad:line15": "invalid_json",
}


def test_prepare_skips_every_bad_sample_and_keeps_good_ones(bad_corpus, tmp_path):
    report, info = prepare([f"bad={bad_corpus}"], tmp_path / "out", to="parquet", progress=False)
    assert {s["id"]: s["kind"] for s in report.skipped} == EXPECTED_KINDS
    assert report.n_ok == info["n_written"] == 2
    invalid = next(s for s in report.skipped if s["kind"] == "invalid_json")
    assert "line 5" in invalid["reason"] and invalid["source"].endswith("manifest.jsonl:5")
    back = list(open_sources([str(tmp_path / "out")], decode=True))
    assert [(s.id, s.text) for s in back] == [("good1", "hello"), ("good2", "world")]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["n_written"] == 2 and saved["skipped_by_kind"]["corrupt_image"] == 4
    assert saved["by_language"] == {"en": 1, "fr": 1}


def test_pixel_limit_option_checks_header_before_decoding(bad_corpus, tmp_path):
    report, _ = prepare([str(bad_corpus)], tmp_path / "o", to="webdataset", max_pixels=1000, progress=False)
    over = {s["id"] for s in report.skipped if s["kind"] == "too_many_pixels"}
    # 60x20 = 1200 px is over a 1000 px limit too; the truncated JPEG (200x80) is refused before decoding
    assert over == {"good1", "good2", "truncated", "huge", "big"}
    assert report.n_ok == 0


def test_without_decode_only_cheap_checks_run(bad_corpus):
    report = DataReport()
    ids = [s.id for s in open_sources([str(bad_corpus)], report=report)]
    assert "truncated" in ids and "missing" not in ids and "escape" not in ids
    # what the server or the loop's inbox reads goes through open_sources: absolute paths stay refused
    assert {s["id"]: s["kind"] for s in report.skipped}["absolute"] == "path_escape"
    with pytest.raises(Exception, match="truncated"):
        next(s for s in open_sources([str(bad_corpus)]) if s.id == "truncated").image  # noqa: B018


def test_cli_prepare_and_stats(bad_corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(
        app, ["data", "prepare", f"bad={bad_corpus}", "--to", "webdataset", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 2 samples" in res.output and "skipped 13" in res.output and "path_escape" in res.output
    assert len(list(out.glob("*.tar"))) == 1
    res = runner.invoke(app, ["data", "prepare", str(bad_corpus), "--out", str(out), "--to", "webdataset"])
    assert res.exit_code == 2 and "already holds" in res.output
    res = runner.invoke(app, ["data", "stats", str(out), "--decode", "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["n_ok"] == 2 and stats["image_width"]["max"] == 200 and stats["text_length"]["mean"] == 5
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "missing-dir")])
    assert res.exit_code == 2 and "missing-dir" in res.output


def test_cli_stats_on_real_set_with_filters(shared_data):
    res = CliRunner().invoke(
        app,
        [
            "data",
            "stats",
            str(shared_data / "tapuscorpus_fr"),
            "--exclude-flag",
            "has_untranscribed",
            "--split",
            "val",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "tapuscorpus_fr" in res.output and "text_length" in res.output
