"""`deepsynth ocr`: files, folders, globs, PDFs; JSONL + txt/md; resumable; --server; a real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.inference.api import create_app
from deepsynth.inference.batch_files import expand_paths, output_root
from deepsynth.inference.service import OCRService
from deepsynth.models import registry
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, colour_image, fondue_lines, running_server

runner = CliRunner()


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    import pypdfium2 as pdfium

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    colour_image((10, 20, 30)).save(root / "a.png")
    colour_image((40, 50, 60)).save(root / "sub" / "b.jpg", quality=100, subsampling=0)
    doc = pdfium.PdfDocument.new()
    doc.new_page(100, 50)
    doc.new_page(100, 50)
    doc.save(str(root / "doc.pdf"))
    (root / "notes.txt").write_text("not an image, ignored when scanning folders")
    return root


@pytest.fixture
def colour_spec(monkeypatch) -> str:
    monkeypatch.setitem(
        registry.ENGINES, "colour-test", registry.Family("tests.serving_engines:build_colour")
    )
    return "colour-test"


def test_expand_paths_files_folders_globs(inputs: Path):
    got = expand_paths(
        [str(inputs / "sub"), str(inputs / "*.pdf"), str(inputs / "a.png"), str(inputs / "a.png")]
    )
    assert [p.name for p in got] == ["a.png", "doc.pdf", "b.jpg"]  # sorted by path, duplicates dropped
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_paths([str(inputs / "nothing-here")])


def test_output_root_is_the_common_folder_in_one_pass():
    paths = [Path("/d/in/sub/b.png"), Path("/d/in/a.png"), Path("/d/in/sub/deep/c.pdf")]
    assert output_root(iter(paths)) == Path("/d/in")  # a generator: read once
    assert output_root([Path("/d/in/sub/b.png")]) == Path("/d/in/sub") and output_root([]) is None


def test_ocr_folder_writes_jsonl_txt_md_and_resumes(inputs: Path, tmp_path: Path, colour_spec: str):
    out = tmp_path / "results.jsonl"
    args = ["ocr", str(inputs), "--model", colour_spec, "--out", str(out), "--no-progress", "--json"]
    args += ["--txt-dir", str(tmp_path / "txt"), "--md-dir", str(tmp_path / "md"), "--dpi", "72"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    recs = {Path(x["input"]).name: x for x in records(out)}
    assert set(recs) == {"a.png", "b.jpg", "doc.pdf"}
    assert recs["a.png"]["text"] == "#0a141e" and recs["a.png"]["status"] == "ok"
    assert (
        recs["doc.pdf"]["n_pages"] == 2 and [p["text"] for p in recs["doc.pdf"]["pages"]] == ["#ffffff"] * 2
    )
    assert (tmp_path / "txt" / "sub" / "b.txt").read_text().startswith("#")
    assert "<!-- page 2 -->" in (tmp_path / "md" / "doc.md").read_text()
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["ok"] == 3 and summary["pages"] == 4

    # second run: everything is done, nothing is appended
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 0
    assert json.loads(r2.output.strip().splitlines()[-1])["skipped_done"] == 3
    assert len(records(out)) == 3


def test_bad_file_fails_alone_and_is_retried_on_the_next_run(inputs: Path, tmp_path: Path, colour_spec: str):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "r.jsonl"
    args = [
        "ocr",
        str(inputs / "*.png"),
        str(inputs / "doc.pdf"),
        "-m",
        colour_spec,
        "-o",
        str(out),
        "--no-progress",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert "broken.png" in r.output and "not a readable image" in r.output
    status = {Path(x["input"]).name: x["status"] for x in records(out)}
    assert status == {"a.png": "ok", "broken.png": "error", "doc.pdf": "ok"}
    colour_image((1, 1, 1)).save(inputs / "broken.png")  # the user fixes the file
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    last = records(out)[-1]
    assert Path(last["input"]).name == "broken.png" and last["text"] == "#010101"
    assert len(records(out)) == 4


def test_ocr_against_a_running_server(inputs: Path, tmp_path: Path):
    app_ = create_app(OCRService(ColourEngine(), obs=Observability("colour")))
    out = tmp_path / "remote.jsonl"
    with running_server(app_) as s:
        r = runner.invoke(
            app, ["ocr", str(inputs / "a.png"), "--server", s.url, "-o", str(out), "--no-progress"]
        )
    assert r.exit_code == 0, r.output
    (rec,) = records(out)
    assert rec["text"] == "#0a141e" and rec["model"] == f"server:{s.url}"


def test_unknown_model_and_missing_inputs_fail_clearly(inputs: Path, tmp_path: Path):
    r = runner.invoke(app, ["ocr", str(inputs / "a.png"), "-m", "nosuch", "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "unknown engine 'nosuch'" in r.output
    r = runner.invoke(app, ["ocr", str(tmp_path / "missing*.png"), "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_real_rapidocr_reads_real_lines(shared_data, tmp_path: Path):
    from deepsynth.evaluation.metrics import cer

    folder = tmp_path / "lines"
    folder.mkdir()
    refs = {}
    for i, (img, text) in enumerate(fondue_lines(shared_data, 4)):
        img.save(folder / f"line{i}.png")
        refs[f"line{i}.png"] = text
    out = tmp_path / "real.jsonl"
    r = runner.invoke(app, ["ocr", str(folder), "-m", "rapidocr", "-o", str(out), "--no-progress", "-b", "4"])
    assert r.exit_code == 0, r.output
    hyps = {Path(x["input"]).name: x["text"] for x in records(out)}
    names = sorted(refs)
    assert cer([refs[n] for n in names], [hyps[n] for n in names]) < 0.05


def test_decode_ahead_decodes_in_order_on_a_background_thread(inputs: Path, monkeypatch):
    import threading

    from deepsynth.inference import batch_files
    from deepsynth.inference.limits import ServingLimits

    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    threads: set[str] = set()
    real = batch_files.decode_file

    def spy(*args, **kw):
        threads.add(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(batch_files, "decode_file", spy)
    paths = expand_paths([str(inputs)])
    got = list(batch_files.decode_ahead(paths, ServingLimits(), ahead=1))
    assert [p for p, _, _ in got] == paths  # input order, whatever the decode timing
    by_name = {p.name: item for p, item, _ in got}
    assert len(by_name["doc.pdf"]) == 2 and isinstance(by_name["broken.png"], str)
    assert "broken.png" in by_name["broken.png"]  # the error names the file
    assert threads == {"deepsynth-decode"}

    def boom(*args, **kw):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(batch_files, "decode_file", boom)
    stream = batch_files.decode_ahead(paths, ServingLimits())
    with pytest.raises(
        RuntimeError, match="decoder crashed"
    ):  # not InputError/OSError: surfaces, not skipped
        next(stream)
    first_two = batch_files.decode_ahead(paths, ServingLimits(), ahead=1)
    monkeypatch.setattr(batch_files, "decode_file", real)
    next(first_two)
    first_two.close()  # stopping early ends the worker thread
    assert not any(t.name == "deepsynth-decode" for t in threading.enumerate())


def test_resume_refuses_another_model_or_options(inputs: Path, tmp_path: Path, colour_spec: str):
    out = tmp_path / "r.jsonl"
    base = ["ocr", str(inputs / "a.png"), "-o", str(out), "--no-progress"]
    assert runner.invoke(app, [*base, "-m", colour_spec]).exit_code == 0
    (rec,) = records(out)
    assert rec["model"] == colour_spec and rec["options"] == {"dpi": 150.0}
    for other in (["-m", f"{colour_spec}:0.01"], ["-m", colour_spec, "--dpi", "72"],
                  ["-m", colour_spec, "--max-new-tokens", "9"]):  # fmt: skip
        r = runner.invoke(app, [*base, *other])
        assert r.exit_code == 2 and "use another --out" in r.output and "skipped" not in r.output, other
    assert len(records(out)) == 1  # nothing appended by a refused run
    r = runner.invoke(app, [*base, "-m", colour_spec])  # same model and options: resumes
    assert r.exit_code == 0 and "1 already done earlier" in r.output, r.output


def test_each_file_gets_its_own_time_and_a_human_summary(tmp_path: Path, colour_spec: str):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        colour_image((i, i, i)).save(folder / f"{i}.png")
    out = tmp_path / "r.jsonl"
    # 0.4 s per model call, 2 one-page files per call: each file's share is ~0.2 s, not the call's 0.4 s
    r = runner.invoke(app, ["ocr", str(folder), "-m", f"{colour_spec}:0.4", "-b", "2", "-o", str(out),
                            "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    seconds = [x["seconds"] for x in records(out)]
    assert len(seconds) == 4 and all(0.19 <= s < 0.35 for s in seconds), seconds
    assert "read 4 file(s), 4 page(s) in" in r.output and "0 failed; 0 already done earlier" in r.output
    assert not r.output.lstrip().startswith("{")


SLOW_OCR = """
import sys
from deepsynth.models import registry
registry.ENGINES["colour-test"] = registry.Family("tests.serving_engines:build_colour")
from deepsynth.cli.main import app
sys.argv = ["deepsynth", *sys.argv[1:]]
app()
"""


def test_ctrl_c_keeps_finished_records_and_says_how_to_resume(tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        colour_image((i, 0, 0)).save(folder / f"{i}.png")
    out = tmp_path / "r.jsonl"
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-c",
        SLOW_OCR,
        "ocr",
        str(folder),
        "-m",
        "colour-test:0.5",
        "-b",
        "1",
        "-o",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    # (SIGINT back to its default in the child: a background job inherits it ignored)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.is_file() and len(records(out)) >= 2):
        time.sleep(0.05)  # records appear one by one while the run goes on
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    n = len(records(out))
    assert 2 <= n < 6 and "Traceback" not in stderr
    assert f"interrupted: {n} of 6 file(s) have their record in {out}" in stdout
    again = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["skipped_done"] == n and summary["ok"] == 6 - n
