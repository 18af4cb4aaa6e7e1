"""`deepsynth samples`: list, show and delete the requests a server kept for auditing (docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from deepsynth import envs

samples_app = typer.Typer(
    help="Look at or delete sampled requests (DEEPSYNTH_SAMPLES_DIR) without stopping the server.",
    no_args_is_help=True,
)

DIR_HELP = "Sample store directory (default: $DEEPSYNTH_SAMPLES_DIR)."


def _store(directory: Path | None):
    from deepsynth.observability.samples import SampleStore

    directory = directory or (Path(d) if (d := envs.DEEPSYNTH_SAMPLES_DIR) else None)
    if directory is None:
        typer.echo("error: give --dir or set DEEPSYNTH_SAMPLES_DIR", err=True)
        raise typer.Exit(2)
    try:
        return SampleStore.open_existing(directory)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@samples_app.command("list")
def list_samples(
    directory: Path | None = typer.Option(None, "--dir", help=DIR_HELP),
    request_id: str | None = typer.Option(None, "--request-id", help="Only samples of this request."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per line (text included)."),
) -> None:
    """List stored samples, oldest first."""
    records = [r for r in _store(directory).list_samples() if request_id in (None, r["request_id"])]
    for r in records:
        if as_json:
            typer.echo(json.dumps(r, ensure_ascii=False))
        else:
            redactions = ",".join(f"{k}={v}" for k, v in sorted(r.get("redactions", {}).items())) or "-"
            typer.echo(
                f"{r['sample_id']}  {r['created']}  request={r['request_id']}  model={r['model_id']}  "
                f"chars={len(r['text'])}  redactions={redactions}"
            )
    if not as_json:
        typer.echo(f"{len(records)} sample(s)", err=True)


@samples_app.command("show")
def show(
    sample_id: str = typer.Argument(..., help="A sample id from `deepsynth samples list`."),
    directory: Path | None = typer.Option(None, "--dir", help=DIR_HELP),
) -> None:
    """Print one stored record (its text is already redacted) and where its image is."""
    store = _store(directory)
    path = store.records_dir / f"{sample_id}.json"
    if not path.is_file():
        typer.echo(f"error: no sample {sample_id!r} in {store.root}", err=True)
        raise typer.Exit(1)
    record = json.loads(path.read_text())
    typer.echo(json.dumps(record, ensure_ascii=False, indent=1))
    if record.get("image"):
        typer.echo(f"image: {store.root / record['image']}", err=True)


@samples_app.command("delete")
def delete(
    sample_ids: list[str] = typer.Argument(None, help="Sample ids to delete."),
    request_id: str | None = typer.Option(None, "--request-id", help="Delete every sample of this request."),
    reason: str = typer.Option("manual", "--reason", help="Recorded in audit.jsonl (e.g. subject_request)."),
    directory: Path | None = typer.Option(None, "--dir", help=DIR_HELP),
) -> None:
    """Delete samples (record and image together); every deletion is written to the audit log."""
    store = _store(directory)
    ids = list(sample_ids or [])
    if request_id is not None:
        ids += [r["sample_id"] for r in store.list_samples() if r["request_id"] == request_id]
    if not ids:
        typer.echo("error: nothing to delete (give sample ids or a --request-id that has samples)", err=True)
        raise typer.Exit(1)
    ids = list(dict.fromkeys(ids))  # each id once, in the order given
    missing = [i for i in ids if not store.delete(i, reason=reason)]
    deleted = len(ids) - len(missing)
    typer.echo(f"deleted {deleted} sample(s)" + (f"; not found: {', '.join(missing)}" if missing else ""))
    if missing:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `deepsynth samples list|show|delete`."""
    app.add_typer(samples_app, name="samples")
