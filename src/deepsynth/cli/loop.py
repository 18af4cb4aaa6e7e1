"""`deepsynth loop`: the improvement loop — run one pass, watch, status, history, promote and roll back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

loop_app = typer.Typer(
    help="Auto-triggered fine-tuning per document type with a promotion gate and an MLflow model registry.",
    no_args_is_help=True,
)
ConfigArg = Annotated[
    Path, typer.Argument(help="Loop config YAML (examples/loop/loop.yaml).", show_default=False)
]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides (trigger.min_new=20).", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Loop config (for its tracking URI).")]
UriOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (else --config's).")]


def _fail(exc: Exception | str) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _config(path: Path, overrides: list[str] | None = None) -> Any:
    from deepsynth.config import ConfigError
    from deepsynth.loop.config import load_loop_config

    try:
        return load_loop_config(path, overrides or [])
    except ConfigError as exc:
        _fail(exc)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


TextfileOpt = Annotated[
    Path | None,
    typer.Option(help="Write the loop's Prometheus metrics here after each pass (default WORKDIR/metrics.prom; "
                 "point it into node_exporter's textfile directory).", show_default=False),
]  # fmt: skip


def _passes(cfg: Any, metrics: Any, max_passes: int | None, interval: float | None) -> None:
    """Run passes (one span tree each) and publish the metrics after every pass, also after a failed one."""
    import time

    from deepsynth.loop.runner import run_once
    from deepsynth.observability.tracing import Tracing

    tracing = Tracing.from_env()
    n = 0
    try:
        while max_passes is None or n < max_passes:
            t0 = time.monotonic()
            try:
                report = run_once(cfg, log=typer.echo, tracing=tracing)
            finally:
                metrics.update(time.monotonic() - t0)
            n += 1
            if max_passes == 1:
                for d in report.decisions:
                    typer.echo(f"{d.doc_type}: {'fire' if d.fire else 'wait'} ({d.reason})")
            if max_passes is None or n < max_passes:
                time.sleep(interval if interval is not None else cfg.watch_interval_seconds)
    finally:
        metrics.close()
        tracing.shutdown()


@loop_app.command()
def run(config: ConfigArg, overrides: OverridesArg = None, metrics_textfile: TextfileOpt = None) -> None:
    """One pass: scan the inbox, count per type, train the types whose trigger fires, gate, register, promote.

    Safe to run from cron: a pass that was killed is resumed by the next one, and the champion only moves
    after the gate's decision is recorded. Metrics: a Prometheus textfile (and DEEPSYNTH_PUSHGATEWAY_URL);
    spans: the OTEL_* environment (docs/observability.md)."""
    from deepsynth.loop.metrics import LoopMetrics

    cfg = _config(config, overrides)
    _passes(cfg, LoopMetrics(cfg, textfile=metrics_textfile), 1, None)


@loop_app.command()
def watch(
    config: ConfigArg,
    overrides: OverridesArg = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between passes (config default).")] = None,
    max_passes: Annotated[int | None, typer.Option(help="Stop after this many passes.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve the loop's metrics on /metrics at this port.", show_default=False),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(help="Address of the /metrics endpoint (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    metrics_textfile: TextfileOpt = None,
) -> None:
    """`loop run` again and again (Ctrl-C stops between passes), with the metrics on /metrics if asked."""
    from deepsynth.loop.metrics import LoopMetrics

    cfg = _config(config, overrides)
    try:
        metrics = LoopMetrics(cfg, textfile=metrics_textfile, port=metrics_port, addr=metrics_addr)
    except OSError as exc:
        _fail(f"--metrics-port {metrics_port} on {metrics_addr}: {exc}")
    if metrics.port is not None:
        typer.echo(f"loop metrics on http://{metrics_addr}:{metrics.port}/metrics")
    try:
        _passes(cfg, metrics, max_passes, interval)
    except KeyboardInterrupt:
        typer.echo("stopped")


@loop_app.command()
def status(config: ConfigArg, overrides: OverridesArg = None, as_json: JsonOpt = False) -> None:
    """Per type: labelled documents and samples, new since its last run, holdout size, champion and its holdout
    CER, and whether the trigger (which counts documents) would fire."""
    from deepsynth.loop.runner import status as get_status

    rows = get_status(_config(config, overrides))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no labelled data seen yet (run `deepsynth loop run CONFIG`)")
    for r in rows:
        champ = (
            f"v{r['champion']} ({_pct(r['champion_holdout_cer'])} holdout CER)" if r["champion"] else "base"
        )
        typer.echo(f"{r['doc_type']}: {r['documents']} documents ({r['labelled']} samples) labelled, "
                   f"{r['new_documents']} new documents ({r['new_since_last_run']} samples) since last run, "
                   f"{r['holdout']} holdout samples; {r['model']} champion {champ}; "
                   f"{'would fire' if r['would_fire'] else 'waits'}: {r['reason']}")  # fmt: skip
    if rows and rows[0]["pending_run"]:
        typer.echo(f"unfinished run: {rows[0]['pending_run']} (the next `loop run` resumes it)")


@loop_app.command()
def history(config: ConfigArg, overrides: OverridesArg = None, as_json: JsonOpt = False) -> None:
    """Every run: types, the gate's numbers per type, the decision and the champion after it."""
    from deepsynth.loop.runner import history as get_history

    records = get_history(_config(config, overrides))
    if as_json:
        typer.echo(json.dumps(records, indent=2, default=str))
        return
    for r in records:
        head = f"{r['run_id']} [{r['stage']}] {r['model_name']}"
        typer.echo(f"{head} v{r.get('version', '?')}: {r.get('decision', 'unfinished')}; "
                   f"champion after: v{r.get('champion_after')}")  # fmt: skip
        for g in (r.get("gate") or {}).get("results", []):
            ci = "–" if g["ci_low"] is None else f"[{100 * g['ci_low']:+.2f}, {100 * g['ci_high']:+.2f}]"
            typer.echo(f"  {g['doc_type']}: CER {_pct(g['cer_champion'])} -> {_pct(g['cer_candidate'])} "
                       f"(n={g['n']}, change CI {ci} points)")  # fmt: skip
        for reason in (r.get("gate") or {}).get("reasons", []):
            typer.echo(f"  gate: {reason}")


def _registry(config: Path | None, tracking_uri: str | None) -> Any:
    from deepsynth.loop.registry import ModelRegistry
    from deepsynth.models.registered import tracking_uri as env_uri

    uri = tracking_uri or (_config(config).registry_uri if config else env_uri())
    if not uri:
        _fail("give --config or --tracking-uri (or set MLFLOW_TRACKING_URI)")
    return ModelRegistry(uri)


@loop_app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to make champion.")],
    config: ConfigOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Point NAME's `champion` alias at VERSION (by hand, without the gate)."""
    from deepsynth.loop.registry import RegistryError

    try:
        _registry(config, tracking_uri).promote(name, version)
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"{name}: champion -> v{version}")


@loop_app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    config: ConfigOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Point NAME's `champion` alias back at the previous champion."""
    from deepsynth.loop.registry import RegistryError

    try:
        version = _registry(config, tracking_uri).rollback(name)
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"{name}: champion -> v{version} (rolled back)")


def register(app: typer.Typer) -> None:
    """Add the `loop` command group to the main app."""
    app.add_typer(loop_app, name="loop")
