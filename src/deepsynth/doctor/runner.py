"""Run checks, each in a fresh Python process with a timeout; one PASS / FAIL / SKIP line each; JSON results.

A check is a function ``check(ctx: CheckContext) -> dict`` named by ``"module:function"``. It runs in its own
process (``python -m deepsynth.doctor.worker``), so a CUDA crash, a hang or leaked GPU memory cannot affect
the next one. It returns details (``step_seconds`` and ``peak_gpu_bytes`` are recognised), raises
:class:`Skip` with a reason, or raises anything else to fail (:class:`CheckFailed` keeps its details). A
check still running after its timeout is killed with its whole process group and reported as FAIL.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MIB = 1024**2


class Skip(Exception):  # noqa: N818 - raised by a check to say "not applicable here", with the reason
    """The check does not apply on this machine; ``str(exc)`` is the reason."""


class CheckFailed(AssertionError):
    """A failure that keeps what the check learnt before failing (e.g. which families passed)."""

    def __init__(self, message: str, details: dict[str, Any]):
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class CheckContext:
    """What every check gets: its own work directory, an optional real checkpoint, and whether CUDA is required."""

    workdir: str
    model: str | None = None  # --model PATH: a real local checkpoint for the fine-tune checks
    require_cuda: bool = True  # False only when tests exercise a check's logic on CPU


@dataclass(frozen=True)
class Check:
    name: str
    target: str  # "package.module:function", called as function(ctx) in a fresh process
    timeout_s: float = 300.0


@dataclass
class CheckResult:
    name: str
    status: str
    reason: str = ""  # SKIP: why; FAIL: the error's last line
    error: str = ""  # FAIL: traceback or the process's output tail
    seconds: float = 0.0
    peak_gpu_mib: float | None = None
    step_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    def line(self) -> str:
        """``PASS  name  3.1 s  peak 812 MiB  step 0.041 s  [details["summary"]]`` / ``SKIP  name  (reason)`` /
        ``FAIL  name  ...  error: ...``."""
        head = f"{self.status}  {self.name:<22}"
        if self.status == SKIP:
            return f"{head} ({self.reason})"
        parts = [f"{self.seconds:6.1f} s"]
        if self.peak_gpu_mib is not None:
            parts.append(f"peak {self.peak_gpu_mib:,.0f} MiB")
        if self.step_seconds is not None:
            parts.append(f"step {self.step_seconds:.3f} s")
        if self.details.get("summary"):
            parts.append(str(self.details["summary"]))
        if self.status == FAIL:
            parts.append(f"error: {self.reason}")
        return f"{head} {'  '.join(parts)}"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the check and every process it started (servers, ray, ...)
    proc.wait()


def run_check(check: Check, ctx: CheckContext, env: dict[str, str] | None = None) -> CheckResult:
    """Run one check in its own process group; never raises for what the check does."""
    workdir = Path(ctx.workdir) / check.name
    workdir.mkdir(parents=True, exist_ok=True)
    result_file, log_file = workdir / "result.json", workdir / "check.log"
    result_file.unlink(missing_ok=True)
    sub_ctx = json.dumps(asdict(CheckContext(str(workdir), ctx.model, ctx.require_cuda)))
    cmd = [sys.executable, "-m", "deepsynth.doctor.worker", check.target, str(result_file), sub_ctx]
    t0 = time.perf_counter()
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env or None
        )
        try:
            code = proc.wait(timeout=check.timeout_s)
        except BaseException as exc:  # timeout, or Ctrl-C / SIGTERM here: the check's own session survives it
            _kill_group(proc)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            return CheckResult(
                check.name, FAIL, f"timed out after {check.timeout_s:g} s (killed)",
                error=_tail(log_file), seconds=round(time.perf_counter() - t0, 2), log=str(log_file),
            )  # fmt: skip
    _kill_group(proc)  # whatever the check left running (a server, workers) goes with it
    seconds = round(time.perf_counter() - t0, 2)
    if not result_file.is_file():
        tail = _tail(log_file)
        last = tail.splitlines()[-1] if tail else ""
        reason = f"process exited with status {code} before reporting" + (f": {last}" if last else "")
        return CheckResult(check.name, FAIL, reason, error=tail, seconds=seconds, log=str(log_file))
    data = json.loads(result_file.read_text())
    return CheckResult(name=check.name, seconds=seconds, log=str(log_file), **data)


def run_checks(
    checks: Sequence[Check],
    ctx: CheckContext,
    *,
    echo: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
    budget_s: float | None = None,
) -> list[CheckResult]:
    """Run ``checks`` in order. With ``ctx.require_cuda``, a first check that SKIPs (no CUDA) skips the rest.
    With ``budget_s``, no check runs past it (its timeout shrinks; later checks SKIP saying so).

    SIGTERM stops the run like Ctrl-C does (the running check's process group is killed first)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        deadline = time.monotonic() + budget_s if budget_s else math.inf
        return _run_all(checks, ctx, echo, env, deadline)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _run_all(
    checks: Sequence[Check],
    ctx: CheckContext,
    echo: Callable[[str], None],
    env: dict[str, str] | None,
    deadline: float,
) -> list[CheckResult]:
    results: list[CheckResult] = []
    no_cuda: str | None = None
    for check in checks:
        left = deadline - time.monotonic()
        if no_cuda is not None:
            result = CheckResult(check.name, SKIP, "no CUDA")
        elif left < 1:
            result = CheckResult(check.name, SKIP, "the run's time budget is used up (--budget-minutes)")
        else:
            timeout = check.timeout_s if left > check.timeout_s else float(round(left))  # whole seconds
            result = run_check(replace(check, timeout_s=timeout), ctx, env)
            if ctx.require_cuda and not results and result.status == SKIP:
                no_cuda = result.reason
                echo(f"no CUDA device visible ({no_cuda}): every GPU check skipped")
                result.reason, result.details["why"] = "no CUDA", no_cuda
        results.append(result)
        echo(result.line())
    return results


def write_report(
    path: str | Path, results: Sequence[CheckResult], ctx: CheckContext, meta: dict[str, Any]
) -> dict[str, Any]:
    """``gpu_check.json``: the machine, the summary counts and every check's result."""
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    report = {
        **meta,
        "model": ctx.model,
        "summary": {k.lower(): v for k, v in counts.items()},
        "checks": [asdict(r) for r in results],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=str))
    return report


def peak_gpu_mib() -> float | None:
    """Peak CUDA memory allocated by this process (all devices), or None when CUDA was never used here."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    return round(peak / MIB, 1)
