"""The `deepsynth` command as a person meets it: --version, -h, help at 80 columns, one-line errors, progress
bars only on a terminal, --sample, zero matched samples, manifests with absolute image paths."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deepsynth.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "deepsynth.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)  # fmt: skip


def test_version_and_short_help_flag():
    from deepsynth import __version__

    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"deepsynth {__version__}"
    for path in ([], ["eval"], ["eval", "compare"], ["data", "prepare"], ["serve"]):
        r = _run(*path, "-h")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage:") and "-h, --help" in r.stdout


def _commands(cmd: typer.core.TyperCommand, path: tuple[str, ...] = ()):
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def test_help_at_80_columns_shows_every_name_whole_and_marks_required():
    root = typer.main.get_command(app)
    runner = CliRunner()
    seen = 0
    for path, cmd in _commands(root):
        out = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"}).output
        assert max(len(line) for line in out.splitlines()) <= 80, (path, out)
        assert "…" not in out and "<bool>" not in out, (path, out)
        for param in cmd.params:
            for name in [*param.opts, *param.secondary_opts]:
                if name.startswith("-"):
                    assert name in out, f"{path}: {name} missing or cut in\n{out}"
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str) and param.show_envvar:
                assert envvar in out, (path, out)
            if param.required and param.param_type_name == "option":
                assert "[required]" in out, (path, param.name)
        seen += 1
    assert seen > 20
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "80"}).output
    assert "DEEPSYNTH_API_TOKEN" in serve and "\nLimits:\n" in serve  # panels kept as sections
    ev = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "80"}).output
    assert ev.count("[required]") == 3 and "\nRay:\n" in ev and "\nCommands:\n" in ev


def test_engine_opt_typo_is_one_line(shared_data, tmp_path):
    data = str(shared_data / "gt4histocr_dta19_lines")
    r = _run("eval", "-e", "rapidocr", "--engine-opt", "thredas=1", "-d", data, "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "thredas" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["serve", "demo-ui"])
def test_busy_port_is_one_line_before_loading_the_model(command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run(command, "-m", "tesseract", "--port", str(port), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: already in use (stop the other " \
                               "server or pick --port)"  # fmt: skip


def test_progress_bars_only_on_a_terminal(tmp_path):
    config = ROOT / "configs" / "ppocr_finetune.yaml"
    # stderr is a pipe here: the resolved config turns progress off; --progress forces it back on
    r = _run("train", str(config), "--print-config")
    assert r.returncode == 0 and "progress: false" in r.stdout
    r = _run("train", str(config), "--print-config", "--progress")
    assert r.returncode == 0 and "progress: true" in r.stdout
    code = "import sys; from deepsynth.cli.console import show_progress; print(show_progress(None))"
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    assert piped.stdout.strip() == "False"


def test_stratified_sample_covers_subsets_and_is_seeded(shared_data):
    from deepsynth.data import open_sources
    from deepsynth.data.sampling import quotas, stratified_sample

    rows = list(open_sources([str(shared_data / "tapuscorpus_fr")]))
    subsets = {s.subset for s in rows}
    assert len(subsets) >= 5
    a = stratified_sample(iter(rows), 20, seed=1)
    assert len(a) == 20 and {s.subset for s in a} == subsets
    assert [s.id for s in a] == [s.id for s in stratified_sample(iter(rows), 20, seed=1)]
    assert [s.id for s in a] != [s.id for s in stratified_sample(iter(rows), 20, seed=2)]
    order = {s.id: i for i, s in enumerate(rows)}
    assert [order[s.id] for s in a] == sorted(order[s.id] for s in a)  # original order kept
    assert quotas({"a": 90, "b": 9, "c": 1}, 10) == {"a": 8, "b": 1, "c": 1}
    assert quotas({"a": 3, "b": 1}, 10) == {"a": 3, "b": 1}
    assert sum(quotas({"a": 5, "b": 5, "c": 5}, 2).values()) == 2


def _manifest(tmp_path: Path, shared_data: Path, image_of) -> Path:  # noqa: ANN001
    src = shared_data / "gt4histocr_dta19_lines"
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()[:2]]
    out = tmp_path / "mine" / "manifest.jsonl"
    out.parent.mkdir()
    out.write_text("".join(json.dumps({**r, "image": image_of(src, r)}) + "\n" for r in rows))
    return out


def test_eval_accepts_absolute_image_paths_and_fails_on_zero_samples(shared_data, tmp_path):
    runner = CliRunner()
    absolute = _manifest(tmp_path, shared_data, lambda src, r: str((src / r["image"]).resolve()))
    common = ["-e", "rapidocr", "--engine-opt", "threads=1", "--no-progress", "--bootstrap", "0"]
    r = runner.invoke(app, ["eval", *common, "-d", f"mine={absolute}", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["n"] == 2
    # a relative path that climbs out of the image root is still refused, so nothing is scored: exit 2
    (tmp_path / "esc").mkdir()
    escaping = _manifest(tmp_path / "esc", shared_data, lambda src, r: "../../" + r["image"])
    r = runner.invoke(app, ["eval", *common, "-d", f"esc={escaping}", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "no samples were scored: 2 skipped" in r.output, r.output
    assert "path_escape: 2" in r.output
    r = runner.invoke(app, ["eval", *common, "-d", f"mine={absolute}", "--subset", "nosuch",
                            "-o", str(tmp_path / "c")])  # fmt: skip
    assert r.exit_code == 2 and "no samples were scored" in r.output


def test_data_prepare_stats_and_train_data_accept_absolute_image_paths(shared_data, tmp_path):
    from deepsynth.data import DataReport
    from deepsynth.training.config import DataSettings
    from deepsynth.training.data import load_split

    runner = CliRunner()
    absolute = _manifest(tmp_path, shared_data, lambda src, r: str((src / r["image"]).resolve()))
    r = runner.invoke(
        app, ["data", "stats", f"mine={absolute}", "--decode", "--json", str(tmp_path / "s.json")]
    )
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["n_ok"] == 2 and stats["n_skipped"] == 0 and stats["image_width"]["min"] > 0
    r = runner.invoke(
        app, ["data", "prepare", f"mine={absolute}", "--to", "jsonl", "--out", str(tmp_path / "p")]
    )
    assert r.exit_code == 0 and "wrote 2 samples" in r.output, r.output
    # `deepsynth train` reads data.train / data.eval with the same function
    d = DataSettings(train=[f"mine={absolute}"], eval=[f"mine={absolute}"])
    assert [len(load_split(d, which, DataReport())) for which in ("train", "eval")] == [2, 2]
    # relative paths climbing out of the image root are still refused, by all three
    (tmp_path / "esc").mkdir()
    escaping = _manifest(tmp_path / "esc", shared_data, lambda src, r: "../../" + r["image"])
    r = runner.invoke(app, ["data", "stats", f"esc={escaping}", "--json", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["skipped_by_kind"] == {"path_escape": 2}, r.output
    r = runner.invoke(
        app, ["data", "prepare", f"esc={escaping}", "--to", "jsonl", "--out", str(tmp_path / "q")]
    )
    assert "wrote 0 samples" in r.output and "skipped 2" in r.output, r.output
    report = DataReport()
    assert load_split(DataSettings(train=[f"esc={escaping}"], eval=None), "train", report) == []
    assert report.n_skipped == 2


def test_eval_sample_option(shared_data, tmp_path):
    runner = CliRunner()
    data = f"tapus={shared_data / 'tapuscorpus_fr'}"
    common = ["-e", "rapidocr", "--engine-opt", "threads=1", "--no-progress", "--bootstrap", "0", "-d", data]
    r = runner.invoke(app, ["eval", *common, "--sample", "3", "--seed", "4", "-o", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    ids = [json.loads(line)["id"] for line in (tmp_path / "s" / "predictions.jsonl").read_text().splitlines()]
    first = [json.loads(line)["id"] for line in (shared_data / "tapuscorpus_fr" / "manifest.jsonl")
             .read_text().splitlines()[:3]]  # fmt: skip
    assert len(ids) == 3 and ids != first
    r = runner.invoke(app, ["eval", *common, "--sample", "3", "--limit", "3", "-o", str(tmp_path / "t")])
    assert r.exit_code == 2 and "exclude each other" in r.output


@pytest.mark.slow
def test_train_prints_each_evaluation_and_a_summary_without_library_bars(tmp_path):
    out = tmp_path / "run"
    r = _run("train", str(ROOT / "configs" / "ppocr_finetune.yaml"), f"output_dir={out}",
             f"data.train=[{SHARED / 'gt4histocr_dta19_lines'}]", "data.limit=8", "data.eval_limit=4",
             "max_steps=2", "epochs=null", "max_minutes=null", "eval.times=null", "eval.every_steps=1",
             "eval.at_start=true", "checkpoint.times=null", "batch_size=4", "num_threads=1", "augment.p=0",
             timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    evals = [line for line in r.stderr.splitlines() if "eval at step" in line]
    assert [line.split("eval at step ")[1].split(":")[0] for line in evals] == ["0", "1", "2"]
    assert all("cer " in line and "% (best " in line for line in evals)
    result = json.loads((out / "result.json").read_text())
    first = result["evals"][0]["cer"]
    assert (
        f"cer: {100 * first:.2f}% at step 0 -> best {100 * result['best_metric']:.2f}% at step " in r.stdout
    )
    assert "Writing model shards" not in r.stderr and "Loading weights" not in r.stderr
    assert "\r" not in r.stderr  # stderr is not a terminal: no carriage-return bars at all


def test_uvicorn_start_and_stop_lines_are_json(tmp_path):
    import signal
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DEEPSYNTH_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "deepsynth.cli.main", "serve", "-m", "tesseract", "--port",
                             str(port), "--in-process", "--no-warmup"], stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    messages = [(rec["logger"], rec["msg"]) for rec in lines]
    assert ("uvicorn.error", "Application startup complete.") in messages
    assert any(logger == "uvicorn.error" and msg.startswith("Uvicorn running on") for logger, msg in messages)
    assert ("uvicorn.error", "Shutting down") in messages
    assert not any("color_message" in rec for rec in lines)
