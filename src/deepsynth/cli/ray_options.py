"""The ``--ray`` options shared by ``deepsynth ocr``, ``eval`` and ``data prepare`` (see docs/scale.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from deepsynth.scale.runtime import WINDOW

RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run as a Ray Data pipeline: `local` (a runtime on this machine, or RAY_ADDRESS when set), "
        "`auto` (the cluster this machine joined) or an address (ray://head:10001). Needs the scale extra.",
        rich_help_panel="Ray",
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=1, help="Engine actors (one engine each).", rich_help_panel="Ray")
]
CpusOpt = Annotated[
    float, typer.Option("--cpus-per-worker", help="CPUs reserved per engine actor.", rich_help_panel="Ray")
]
GpusOpt = Annotated[
    float, typer.Option("--gpus-per-worker", help="GPUs per engine actor (0: CPU).", rich_help_panel="Ray")
]
ShardOpt = Annotated[
    int,
    typer.Option(
        "--shard-size", min=1, help="Records per result shard (the unit of resume).", rich_help_panel="Ray"
    ),
]
WindowOpt = Annotated[
    int,
    typer.Option(
        "--window",
        min=1,
        help="Shards per Ray Data run: the driver holds one window; the engine actors restart for each.",
        rich_help_panel="Ray",
    ),
]


def ray_options(
    address: str,
    workers: int,
    cpus: float,
    gpus: float,
    shard_size: int,
    batch_size: int,
    window: int = WINDOW,
) -> Any:
    """A :class:`deepsynth.scale.runtime.RayOptions`, or exit with a clear message when Ray is missing."""
    try:
        import ray  # noqa: F401

        from deepsynth.scale.runtime import RayOptions
    except ImportError as exc:
        typer.secho(
            f"error: --ray needs Ray: pip install 'deepsynth[scale]' ({exc})", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2) from exc
    try:
        return RayOptions(address=address, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                          shard_size=shard_size, batch_size=batch_size, window=window)  # fmt: skip
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def print_stats(stats: Any) -> None:
    """The final human summary of a ``--ray`` run (and the dashboard link when there is one)."""
    typer.echo(f"ray: {stats.summary()}", err=True)
    for line in stats.worker_lines():
        typer.echo(f"ray {line}", err=True)
    if stats.dashboard:
        typer.echo(f"ray dashboard: {stats.dashboard}", err=True)


def fail_job(exc: BaseException) -> None:
    """Exit 1 with the root cause of a failed Ray job (Ray wraps it in long tracebacks)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    typer.secho(f"error: Ray job failed: {lines[-1] if lines else type(exc).__name__}", fg=typer.colors.RED,
                err=True)  # fmt: skip
    typer.echo("the completed shards are kept: rerun the same command to resume", err=True)
    raise typer.Exit(1) from exc
