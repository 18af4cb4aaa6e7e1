"""`deepsynth samples`: list, show and delete the requests a server kept for auditing, and (``--feedback``) the
corrections posted to it (docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from deepsynth import envs

samples_app = typer.Typer(
    help="Look at or delete sampled requests (DEEPSYNTH_SAMPLES_DIR) or, with --feedback, stored corrections "
    "(DEEPSYNTH_FEEDBACK_DIR) without stopping the server.",
    no_args_is_help=True,
)

DIR_HELP = "Store directory (default: $DEEPSYNTH_SAMPLES_DIR, with --feedback $DEEPSYNTH_FEEDBACK_DIR)."
FEEDBACK_HELP = "The feedback store (corrections posted to POST /v1/feedback and the inputs they refer to)."


def _store(directory: Path | None, feedback: bool = False):
    from deepsynth.observability.feedback import FeedbackStore
    from deepsynth.observability.samples import SampleStore

    var = "DEEPSYNTH_FEEDBACK_DIR" if feedback else "DEEPSYNTH_SAMPLES_DIR"
    directory = directory or (Path(d) if (d := envs.read(var)) else None)
    if directory is None:
        typer.echo(f"error: give --dir or set {var}", err=True)
        raise typer.Exit(2)
    try:
        return (FeedbackStore if feedback else SampleStore).open_existing(directory)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@samples_app.command("list")
def list_samples(
    directory: Path | None = typer.Option(None, "--dir", help=DIR_HELP),
    request_id: str | None = typer.Option(None, "--request-id", help="Only samples of this request."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per line (text included)."),
    feedback: bool = typer.Option(False, "--feedback", help=FEEDBACK_HELP),
) -> None:
    """List stored samples (or corrections), oldest first."""
    if feedback:
        _list_feedback(_store(directory, feedback=True), request_id, as_json)
        return
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


def _list_feedback(store, request_id: str | None, as_json: bool) -> None:  # noqa: ANN001
    rows = [r for r in store.feedback() if request_id in (None, r.get("request_id"))]
    for r in rows:
        if as_json:
            typer.echo(json.dumps(r, ensure_ascii=False))
        else:
            typer.echo(
                f"{r['id']}  {r['created']}  request={r.get('request_id') or '-'}  page={r.get('page') or '-'}  "
                f"doc_type={r['doc_type']}  model={r.get('model') or '-'}  chars={len(r['text'])}"
            )
    inputs = [m for m in store.inputs() if request_id in (None, m["request_id"])]
    if not as_json:
        typer.echo(f"{len(rows)} correction(s); inputs kept of {len(inputs)} request(s)", err=True)


@samples_app.command("show")
def show(
    sample_id: str = typer.Argument(..., help="A sample id from `deepsynth samples list`."),
    directory: Path | None = typer.Option(None, "--dir", help=DIR_HELP),
    feedback: bool = typer.Option(False, "--feedback", help=FEEDBACK_HELP),
) -> None:
    """Print one stored record (a sample's text is already redacted) and where its image is."""
    if feedback:
        store = _store(directory, feedback=True)
        row = next((r for r in store.feedback() if r["id"] == sample_id), None)
        if row is None:
            typer.echo(f"error: no correction {sample_id!r} in {store.root}", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps(row, ensure_ascii=False, indent=1))
        typer.echo(f"image: {store.root / row['image']}", err=True)
        return
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
    feedback: bool = typer.Option(False, "--feedback", help=FEEDBACK_HELP),
) -> None:
    """Delete samples (record and image together) or, with --feedback, corrections (line and image; with
    --request-id also the request's kept input); every deletion is written to the audit log."""
    if feedback:
        _delete_feedback(_store(directory, feedback=True), list(sample_ids or []), request_id, reason)
        return
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


def _delete_feedback(store, ids: list[str], request_id: str | None, reason: str) -> None:  # noqa: ANN001
    ids = list(dict.fromkeys(ids))
    deleted = store.delete(ids, reason=reason) if ids else []
    inputs = 0
    if request_id is not None:
        by_request, inputs = store.delete_request(request_id, reason=reason)
        deleted += by_request
    if not ids and not deleted and not inputs:
        typer.echo("error: nothing to delete (give correction ids or a --request-id that has some)", err=True)
        raise typer.Exit(1)
    missing = [i for i in ids if i not in deleted]
    typer.echo(
        f"deleted {len(deleted)} correction(s) and the kept input of {inputs} request(s)"
        + (f"; not found: {', '.join(missing)}" if missing else "")
    )
    if missing:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `deepsynth samples list|show|delete`."""
    app.add_typer(samples_app, name="samples")
