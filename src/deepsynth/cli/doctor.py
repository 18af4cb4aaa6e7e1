"""`deepsynth doctor [--gpu]`: what this machine can run; with --gpu every CUDA-only path, checked for real."""

from __future__ import annotations

from pathlib import Path

import typer


def doctor(
    gpu: bool = typer.Option(
        False,
        "--gpu",
        help="Run the GPU checks (each in its own process with a timeout); see docs/models.md.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="With --gpu: also run the fine-tune checks on this local checkpoint (PATH or FAMILY:PATH).",
    ),
    out: Path = typer.Option(Path("gpu_check.json"), "--out", help="With --gpu: where the results go."),
    only: list[str] | None = typer.Option(None, "--only", help="With --gpu: run only these checks."),
    budget_minutes: float = typer.Option(
        30.0,
        "--budget-minutes",
        min=1,
        help="With --gpu: stop starting checks after this long (SKIP the rest).",
    ),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="With --gpu: keep each check's files and log here (default: a temp dir)."
    ),
) -> None:
    """Print versions of the packages and tools DeepSynth uses; --gpu exits 1 if a GPU check fails."""
    from deepsynth.doctor import environment

    env = environment.report()
    for line in environment.lines(env):
        typer.echo(line)
    if not gpu:
        return
    import tempfile
    import time

    from deepsynth.doctor.fixtures import model_family
    from deepsynth.doctor.gpu_checks import select
    from deepsynth.doctor.runner import FAIL, CheckContext, run_checks, write_report
    from deepsynth.training.run_info import git_info

    try:
        if model:
            model_family(
                model
            )  # a path without a recognisable model is an error now, not after the other checks
        checks = select(only, model)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    with tempfile.TemporaryDirectory(prefix="deepsynth-gpu-check-") as tmp:
        ctx = CheckContext(str(workdir or tmp), model=model)
        results = run_checks(checks, ctx, echo=typer.echo, budget_s=budget_minutes * 60)
        if workdir is None:  # the temp dir goes away: failures keep their output tail in "error"
            for r in results:
                r.log = ""
        meta = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git": git_info(),
            **{k: env[k] for k in ("python", "platform", "packages", "device")},
        }
        report = write_report(out, results, ctx, meta)
    s = report["summary"]
    typer.echo(f"{s['pass']} passed, {s['fail']} failed, {s['skip']} skipped -> {out}")
    if any(r.status == FAIL for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `deepsynth doctor`."""
    app.command("doctor")(doctor)
