"""`deepsynth doctor [--gpu]`: the CPU path of `make gpu-check`, and the runner's isolation (real processes that
fail, crash or hang on purpose)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deepsynth.doctor.fixtures import model_family
from deepsynth.doctor.gpu_checks import CHECKS, MODEL_CHECKS
from deepsynth.doctor.runner import FAIL, PASS, SKIP, Check, CheckContext, run_checks, write_report

PROBES = """
import os, subprocess, sys, time
from deepsynth.doctor.runner import Skip

def ok(ctx):
    # peak_gpu_bytes: memory measured in another process (a server's model process)
    return {"step_seconds": 0.25, "peak_gpu_bytes": 3 * 1024**2, "answer": 42, "workdir": ctx.workdir, "summary": "all good"}

def boom(ctx):
    raise ValueError("boom: the check failed on purpose")

def crash(ctx):
    os._exit(3)

def skip(ctx):
    raise Skip("nothing to check here")

def partial(ctx):
    from deepsynth.doctor.backends import per_family

    def one(family):
        if family == "b":
            raise RuntimeError("b broke")
        return {"ok": family}

    return per_family(["a", "b", "c"], one)

def leaky(ctx):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.path.join(ctx.workdir, "child.pid"), "w").write(str(child.pid))
    return {}

def hang(ctx):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.path.join(ctx.workdir, "child.pid"), "w").write(str(child.pid))
    time.sleep(600)
"""


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture()
def probe_env(tmp_path: Path) -> dict[str, str]:
    """A module of checks that pass, fail, crash, skip and hang, importable by the check processes."""
    (tmp_path / "doctor_probes.py").write_text(textwrap.dedent(PROBES))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}


def _run(checks, tmp_path, env, require_cuda=False):
    lines: list[str] = []
    ctx = CheckContext(str(tmp_path / "work"), require_cuda=require_cuda)
    return run_checks(checks, ctx, echo=lines.append, env=env), lines, ctx


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").is_dir() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_each_outcome_is_reported_in_one_line_with_the_error(tmp_path, probe_env):
    checks = [
        Check("ok", "doctor_probes:ok"),
        Check("boom", "doctor_probes:boom"),
        Check("crash", "doctor_probes:crash"),
        Check("skip", "doctor_probes:skip"),
        Check("missing", "doctor_probes:no_such_check"),
        Check("partial", "doctor_probes:partial"),
    ]
    results, lines, ctx = _run(checks, tmp_path, probe_env)
    by = {r.name: r for r in results}
    assert [r.status for r in results] == [PASS, FAIL, FAIL, SKIP, FAIL, FAIL]
    # every family is tried; the failure names the broken one and keeps what the others found
    assert by["partial"].reason == "CheckFailed: b: RuntimeError: b broke"
    assert by["partial"].details == {
        "a": {"ok": "a"},
        "b": {"error": "RuntimeError: b broke"},
        "c": {"ok": "c"},
    }
    assert by["ok"].step_seconds == 0.25 and by["ok"].details["answer"] == 42 and by["ok"].peak_gpu_mib == 3.0
    assert by["ok"].details["workdir"] == str(tmp_path / "work" / "ok")  # each check has its own directory
    assert by["boom"].reason == "ValueError: boom: the check failed on purpose"
    assert "raise ValueError" in by["boom"].error  # the traceback goes into the JSON
    assert by["crash"].reason.startswith("process exited with status 3 before reporting")
    assert by["skip"].reason == "nothing to check here"
    assert by["missing"].reason.startswith("AttributeError")
    assert len(lines) == len(checks)
    assert lines[0].startswith("PASS  ok") and lines[0].endswith("peak 3 MiB  step 0.250 s  all good")
    assert lines[1].startswith("FAIL  boom") and "error: ValueError: boom" in lines[1]
    assert lines[3] == f"SKIP  {'skip':<22} (nothing to check here)"

    report = write_report(tmp_path / "out" / "gpu_check.json", results, ctx, {"device": "test"})
    on_disk = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["summary"] == {"pass": 1, "fail": 4, "skip": 1}
    assert on_disk["checks"][0]["step_seconds"] == 0.25 and on_disk["device"] == "test"


def test_a_hanging_check_is_killed_with_its_children_at_the_timeout(tmp_path, probe_env):
    t0 = time.perf_counter()
    results, lines, _ = _run(
        [Check("hang", "doctor_probes:hang", timeout_s=6), Check("ok", "doctor_probes:ok")],
        tmp_path,
        probe_env,
    )
    assert time.perf_counter() - t0 < 60
    hang, ok = results
    assert hang.status == FAIL and hang.reason == "timed out after 6 s (killed)"
    assert 6 <= hang.seconds < 30
    pid = int((tmp_path / "work" / "hang" / "child.pid").read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the hanging check's child process survived the timeout"
    assert ok.status == PASS  # the next check still runs


def test_what_a_passing_check_leaves_running_is_killed(tmp_path, probe_env):
    (result,), _, _ = _run([Check("leaky", "doctor_probes:leaky")], tmp_path, probe_env)
    assert result.status == PASS
    pid = int((tmp_path / "work" / "leaky" / "child.pid").read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "a process started by a finished check is still running"


def test_the_run_budget_shortens_the_last_timeout_and_skips_what_does_not_fit(tmp_path, probe_env):
    checks = [Check("hang", "doctor_probes:hang", timeout_s=600), Check("ok", "doctor_probes:ok")]
    lines: list[str] = []
    ctx = CheckContext(str(tmp_path / "work"), require_cuda=False)
    t0 = time.perf_counter()
    hang, ok = run_checks(checks, ctx, echo=lines.append, env=probe_env, budget_s=5)
    assert time.perf_counter() - t0 < 60
    assert hang.status == FAIL and hang.reason == "timed out after 5 s (killed)"
    assert ok.status == SKIP and ok.reason == "the run's time budget is used up (--budget-minutes)"


def test_a_first_check_that_skips_skips_every_other_check_when_cuda_is_required(tmp_path, probe_env):
    checks = [Check("cuda", "doctor_probes:skip"), Check("ok", "doctor_probes:ok")]
    results, lines, _ = _run(checks, tmp_path, probe_env, require_cuda=True)
    assert [(r.status, r.reason) for r in results] == [(SKIP, "no CUDA"), (SKIP, "no CUDA")]
    assert lines[0] == "no CUDA device visible (nothing to check here): every GPU check skipped"
    assert not (tmp_path / "work" / "ok").exists()  # never started


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA: the checks would run for real")
def test_doctor_gpu_without_cuda_skips_every_check_and_exits_0(tmp_path):
    out, model = tmp_path / "gpu_check.json", tmp_path / "my-checkpoint"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "deepseek_ocr2"}))
    proc = subprocess.run(
        [sys.executable, "-m", "deepsynth.cli.main", "doctor", "--gpu", "--out", str(out), "--model", str(model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum("no CUDA device visible" in line for line in lines) == 1
    skipped = [line for line in lines if line.startswith("SKIP  ")]
    checks = [*CHECKS, *MODEL_CHECKS]  # --model adds the fine-tune checks on that checkpoint
    assert [line.split()[1] for line in skipped] == [c.name for c in checks]
    assert all(line.endswith("(no CUDA)") for line in skipped)
    assert not any(line.startswith(("PASS", "FAIL")) for line in lines)
    report = json.loads(out.read_text())
    assert report["summary"] == {"pass": 0, "fail": 0, "skip": len(checks)}
    assert [(c["name"], c["status"], c["reason"]) for c in report["checks"]] == [
        (c.name, SKIP, "no CUDA") for c in checks
    ]
    assert report["model"] == str(model) and report["created"] and "commit" in report["git"]
    assert all(c["log"] == "" for c in report["checks"])  # no path into the deleted temp dir
    assert report["packages"]["torch"] and report["device"]


def test_doctor_prints_the_environment(tmp_path):
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    import torch

    assert f"torch         {torch.__version__}" in res.output
    for tool in ("tesseract", "promtool", "chromium", "nvidia-smi"):
        assert f"  {tool}" in res.output
    assert not (tmp_path / "gpu_check.json").exists()
    res = CliRunner().invoke(app, ["doctor", "--gpu", "--only", "nope"])
    assert res.exit_code == 2 and "unknown check(s) nope" in res.output
    res = CliRunner().invoke(app, ["doctor", "--gpu", "--model", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and f"--model {tmp_path / 'nowhere'}: no config.json" in res.output


def test_model_family_of_a_local_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert model_family(str(tmp_path)) == ("qwen2_5_vl", str(tmp_path))
    assert model_family(f"got_ocr2:{tmp_path}") == ("got_ocr2", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not a DeepSynth family"):
        model_family(str(tmp_path))
    with pytest.raises(ValueError, match="no config.json"):
        model_family(str(tmp_path / "missing"))
    saved = tmp_path / "runs" / "final"  # a directory saved by DeepSynth names its family in its card
    saved.mkdir(parents=True)
    (saved / "deepsynth_model.json").write_text(json.dumps({"family": "trocr", "format": "lora"}))
    assert model_family(str(saved)) == ("trocr", str(saved))


def test_recipes_come_from_the_checkout_or_the_working_directory(tmp_path, monkeypatch):
    from deepsynth.doctor.fixtures import recipe

    assert (
        recipe("deepseek_ocr2_qlora.yaml")
        == Path(__file__).resolve().parents[1] / "configs" / "deepseek_ocr2_qlora.yaml"
    )
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("max_steps: 1\n")
    monkeypatch.chdir(tmp_path)  # the Docker images run from /workspace, which holds configs/
    assert recipe("mine.yaml") == tmp_path / "configs" / "mine.yaml"
    assert recipe("absent.yaml") is None


def test_gpu_gauge_is_read_from_the_prometheus_text():
    from deepsynth.doctor.serving import gpu_gauge

    text = (
        "# HELP deepsynth_gpu_memory_bytes CUDA memory held by the model.\n"
        "# TYPE deepsynth_gpu_memory_bytes gauge\n"
        'deepsynth_gpu_memory_bytes{device="0",kind="allocated"} 1.5e+07\n'
        'deepsynth_gpu_memory_bytes{device="0",kind="max_allocated"} 2.5e+07\n'
        'deepsynth_requests_total{route="/v1/ocr"} 3.0\n'
    )
    assert gpu_gauge(text) == {"0/allocated": 1.5e7, "0/max_allocated": 2.5e7}
    assert gpu_gauge("") == {}


def test_backend_auto_uses_unsloth_only_for_the_families_it_supports(monkeypatch):
    """CUDA and the unsloth package cannot exist here: both are faked, the family rule is real."""
    import importlib.util

    from deepsynth.models.vlm import lora as lora_mod

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(lora_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(
        lora_mod.importlib.util,
        "find_spec",
        lambda n, *a: object() if n == "unsloth" else real_find_spec(n, *a),
    )
    assert lora_mod.resolve_backend("auto", "qwen2_5_vl") == "unsloth"
    assert lora_mod.resolve_backend("auto", "deepseek_ocr2") == "peft"
    ok, why = lora_mod.unsloth_available("deepseek_ocr2")
    assert not ok and why.startswith("deepseek_ocr2 is not among Unsloth's vision architectures")
    assert lora_mod.resolve_backend("unsloth", "deepseek_ocr2") == "unsloth"  # forcing it still tries


@pytest.mark.slow
@pytest.mark.parametrize("name", ["merge_parity", "serve_vlm"])
def test_check_logic_runs_on_cpu(tmp_path, name):
    """The checks' own code (trainer run, export, `deepsynth serve` + HTTP + /metrics) run here with the CUDA
    expectations off, so a GPU machine is not the first to execute them."""
    (check,) = [c for c in CHECKS if c.name == name]
    results, lines, _ = _run([check], tmp_path, env=None)
    (r,) = results
    assert r.status == PASS, f"{r.reason}\n{r.error}"
    if name == "merge_parity":
        assert r.details["device"] == "cpu" and len(r.details["losses"]) == 4 and r.step_seconds > 0
        assert r.details["fp32"]["max_abs_diff_merged_vs_unmerged"] < 1e-5
        assert r.details["fp32"]["max_abs_diff_exported_vs_trained"] < 1e-5
        # recorded, not judged: bf16 rounding alone exceeds the export's 1e-3 (hence export --dtype float32)
        assert r.details["bf16"]["max_abs_diff_merged_vs_unmerged"] > 1e-3
    else:
        assert r.details["request_seconds"] > 0 and r.details["gauge"] == {}  # no CUDA memory on CPU


@pytest.mark.parametrize("driver", [True, False])
def test_make_gpu_check_installs_the_gpu_extra_only_with_a_gpu_driver(tmp_path, driver):
    """The target's own recipe, with pip and python replaced by echo (`-o install`: nothing is installed)."""
    import shutil

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if driver:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    root = Path(__file__).resolve().parents[1]
    cmd = [make, "-s", "-o", "install", "gpu-check", "PIP=echo pip", "PY=echo py", "MODEL=/models/x"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    installs = [line for line in lines if line.startswith("pip install") and "gpu]" in line]
    assert len(installs) == (1 if driver else 0), out.stdout
    if not driver:
        assert "no nvidia-smi (no GPU driver): the gpu extra is not installed" in out.stdout
    assert lines[-1] == "py -m deepsynth.cli.main doctor --gpu --out gpu_check.json --model /models/x"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA: on this machine every GPU check is SKIP(no CUDA)")
def test_every_gpu_check_passes_on_this_gpu(tmp_path):  # pragma: no cover - GPU machines only
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "deepsynth.cli.main", "doctor", "--gpu", "--out", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    report = json.loads(out.read_text())
    failed = {c["name"]: c["reason"] for c in report["checks"] if c["status"] == FAIL}
    assert proc.returncode == 0 and not failed, failed or proc.stdout


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupting_the_runner_kills_the_running_check_and_its_children(tmp_path, probe_env, signame):
    """Checks run in their own session (a timeout kills the whole group), so Ctrl-C would not reach them:
    the runner kills them itself before it stops, on Ctrl-C as on SIGTERM."""
    import signal

    code = (
        "from deepsynth.doctor.runner import Check, CheckContext, run_checks\n"
        f"run_checks([Check('hang', 'doctor_probes:hang', 600)], CheckContext({str(tmp_path / 'work')!r}))\n"
    )
    # Ctrl-C must reach the runner even when pytest itself was started with SIGINT ignored (a background job)
    runner = subprocess.Popen([sys.executable, "-c", code], env=probe_env, preexec_fn=_default_sigint)
    pid_file = tmp_path / "work" / "hang" / "child.pid"
    deadline = time.time() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    child = int(pid_file.read_text())
    group = os.getpgid(child)  # the check's own session: cleaned up below if the runner failed to
    try:
        runner.send_signal(getattr(signal, signame))
        assert runner.wait(30) != 0
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the check's child outlived the interrupted runner"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def test_only_keeps_the_cuda_gate_first_and_model_adds_its_checks():
    from deepsynth.doctor.gpu_checks import select

    assert [c.name for c in select(["merge_parity"])] == ["cuda", "merge_parity"]
    assert [c.name for c in select(None, "/m")][-3:] == ["model_lora", "model_qlora", "model_unsloth"]
    assert "model_lora" not in [c.name for c in select()]
    with pytest.raises(ValueError, match="unknown check"):
        select(["model_lora"])  # only with --model


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default (a background job inherits it ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
