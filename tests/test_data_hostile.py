"""Hostile manifest lines for ``data prepare`` (issue 16 items 7, 8): any one bad line is named (file, line,
reason) and skipped, every good sample is kept, the report is written and the output is complete or absent."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deepsynth.data import DataReport, open_sources
from deepsynth.data.prepare import prepare
from deepsynth.data.writers import WRITE_FORMATS, ParquetShardWriter

DEEP = b'{"id": "deep", "image": "a.png", "text": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _good(i: int, image: str = "a.png") -> bytes:
    row = {"id": f"good{i}", "image": image, "text": f"line {i} \u00e9\u017f", "language": "de"}
    return json.dumps(row, ensure_ascii=False).encode()


@pytest.fixture()
def root(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    Image.new("RGB", (40, 12), "white").save(root / "a.png")
    Image.new("RGB", (30, 12), "black").save(root / "b.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _write_manifest(root, lines: list[bytes]) -> None:
    (root / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")


HOSTILE = [
    b"\xef\xbb\xbf" + _good(0),  # 1: a UTF-8 BOM before a good line: kept
    b'{"id": "surrogate", "image": "a.png", "text": "bad \\ud800 text"}',  # 2
    DEEP,  # 3
    _good(1, "b.png"),  # 4
    b'{"id": "meta", "image": "a.png", "text": "x", "meta": "'
    + b"[" * 50_000
    + b'"}',  # 5: kept, meta as text
    b'{"id": "n", "image": "a.png", "text": "x", "n": ' + b"9" * 5000 + b"}",  # 6: int over 4300 digits
    b'{"id": "lang", "image": "a.png", "text": "x", "language": ["de"]}',  # 7
    b'{"id": "key", "image": "a.png", "text": "x", "\\udfff": 1}',  # 8: a lone surrogate in a key
]
HOSTILE_BAD = {2: "not valid Unicode", 3: "nested too deeply", 6: "invalid JSON", 7: "invalid field 'language'", 8: "not valid Unicode"}  # fmt: skip


@pytest.mark.parametrize("fmt", WRITE_FORMATS)
def test_hostile_lines_are_named_and_skipped_in_every_format(root, tmp_path, fmt):
    _write_manifest(root, HOSTILE)
    out = tmp_path / "out"
    report, info = prepare([f"h={root}"], out, to=fmt, progress=False)
    manifest = root / "manifest.jsonl"
    named = {int(s["source"].rsplit(":", 1)[1]): s["reason"] for s in report.skipped}
    assert named.keys() == HOSTILE_BAD.keys()
    for line, words in HOSTILE_BAD.items():
        assert words in named[line] and f"on line {line}" in named[line]
    assert all(s["source"].startswith(str(manifest)) for s in report.skipped)
    back = {s.id.split("_", 1)[-1]: s for s in open_sources([str(out)], decode=True)}  # folder: NNN_id
    assert sorted(back) == ["good0", "good1", "meta"] and info["n_written"] == 3
    if fmt != "folder":  # .gt.txt sidecars keep only the text
        assert back["meta"].meta["meta"] == "[" * 50_000
    assert back["good0"].text == "line 0 \u00e9\u017f"
    saved = json.loads((out / "report.json").read_text())
    assert saved["n_skipped"] == 5 and saved["skipped_by_kind"]["invalid_json"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]  # no temp dir left


def test_a_failed_run_leaves_no_output_and_old_output_intact(root, tmp_path, monkeypatch):
    _write_manifest(root, [_good(0), _good(1, "b.png")])
    out = tmp_path / "out"
    prepare([str(root)], out, to="jsonl", progress=False)  # earlier output of another format stays
    before = sorted(p.name for p in out.iterdir())

    def write(self, sample):  # the disk fills up on the second sample
        if self.n == 1:
            raise OSError(28, "No space left on device")
        self.n += 1

    monkeypatch.setattr(ParquetShardWriter, "write", write)
    with pytest.raises(OSError, match="No space"):
        prepare([str(root)], out, to="parquet", progress=False)
    with pytest.raises(OSError, match="No space"):
        prepare([str(root)], tmp_path / "new", to="parquet", progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_a_killed_run_leaves_a_temp_dir_the_next_run_removes(root, tmp_path):
    _write_manifest(root, [_good(0)])
    dead = tmp_path / ".tmp-out.pid999999999-0badc0de"  # what kill -9 during a prepare leaves
    (dead / "images").mkdir(parents=True)
    report, _ = prepare([str(root)], tmp_path / "out", to="jsonl", progress=False)
    assert report.n_ok == 1 and not dead.exists()


def test_duplicates_are_rejected_before_any_image_is_decoded(root, tmp_path, monkeypatch):
    # the duplicate points at a corrupt image: named as a duplicate, so its image was never opened
    lines = [_good(0), *[_good(0, "broken.png")] * 50, _good(1, "b.png")]
    _write_manifest(root, lines)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
    report = DataReport()
    kept = [s.id for s in open_sources([str(root)], report=report, decode=True)]
    assert kept == ["good0", "good1"] and len(opened) == 2
    assert report.skipped_by_kind() == {"duplicate_id": 50}
    # an id whose first sample was bad is not a duplicate: the later good sample is kept
    _write_manifest(root, [_good(0, "broken.png"), _good(0)])
    report = DataReport()
    assert [s.id for s in open_sources([str(root)], report=report, decode=True)] == ["good0"]
    assert report.skipped_by_kind() == {"corrupt_image": 1}


# ---- property: random lines mixed with good ones ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CORE = st.sampled_from(["id", "image", "text", "language", "subset", "level", "meta", "page_id"])
rows = st.dictionaries(
    CORE | st.text(max_size=6), json_values | st.sampled_from(["a.png", "b.png", "../a.png"])
)
bad_lines = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    rows.map(lambda r: json.dumps(r).encode()),
    rows.map(lambda r: b"\xef\xbb\xbf" + json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d),
).map(lambda b: b.replace(b"\n", b" "))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.booleans(), bad_lines), min_size=1, max_size=12),
    st.sampled_from(["jsonl", "parquet", "webdataset"]),
)
def test_random_lines_never_lose_a_good_sample_or_go_unnamed(root, tmp_path_factory, lines, fmt):
    manifest_lines, good_ids, bad_numbers = [], [], set()
    for i, (is_good, bad) in enumerate(lines):
        line = _good(i) if is_good else bad
        manifest_lines.append(line)
        if is_good:
            good_ids.append(f"good{i}")
        elif line.strip():
            bad_numbers.add(i + 1)
    _write_manifest(root, manifest_lines)
    out = tmp_path_factory.mktemp("out") / "o"
    report, info = prepare([f"p={root}"], out, to=fmt, progress=False)
    kept = [s.id for s in open_sources([str(out)])]
    # random lines that happen to be valid samples (an id, a text, an existing image) are kept too
    assert set(good_ids) <= set(kept) and info["n_written"] == len(kept) == report.n_ok
    named = {int(s["source"].rsplit(":", 1)[1]) for s in report.skipped}
    kept_lines = {
        int(s.meta["origin"].rsplit(":", 1)[1]) for s in open_sources([f"p={root}"]) if s.id in set(kept)
    }
    assert bad_numbers <= named | kept_lines
    assert (out / "report.json").is_file()
