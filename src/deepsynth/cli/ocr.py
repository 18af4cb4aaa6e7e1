"""`deepsynth ocr`: read files, folders, globs and PDFs into a JSONL file (resumable)."""

from __future__ import annotations

from pathlib import Path

import typer

from deepsynth.cli.console import DEFAULT_ENGINE, ProgressOpt, show_progress
from deepsynth.cli.ray_options import CpusOpt, GpusOpt, RayOpt, ShardOpt, WindowOpt, WorkersOpt
from deepsynth.scale.runtime import WINDOW


def ocr(
    paths: list[str] = typer.Argument(
        ..., help="Image/PDF files, folders (recursive) or globs ('scans/**/*.tif')."
    ),
    out: Path = typer.Option(
        Path("results.jsonl"), "--out", "-o", help="JSONL output (appended; resumable)."
    ),
    model: str = typer.Option(
        DEFAULT_ENGINE,
        "--model",
        "-m",
        help="Engine spec: rapidocr:page, ppocr:runs/x/best, deepseek_ocr2:DIR ...",
    ),
    server: str | None = typer.Option(
        None, "--server", help="Use a running DeepSynth or OpenAI-compatible server instead of a local model."
    ),
    server_model: str | None = typer.Option(
        None, "--server-model", help="Model id on an OpenAI-compatible server."
    ),
    token: str | None = typer.Option(None, "--token", help="Bearer token (default: $DEEPSYNTH_API_TOKEN)."),
    txt_dir: Path | None = typer.Option(None, "--txt-dir", help="Also write one .txt per input here."),
    md_dir: Path | None = typer.Option(None, "--md-dir", help="Also write one .md per input here."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Pages per model call."),
    dpi: float = typer.Option(150.0, "--dpi", help="PDF rendering resolution."),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Generative models: output limit."
    ),
    retry_truncated: int = typer.Option(0, "--retry-truncated", help="Retries for outputs cut at the limit."),
    progress: ProgressOpt = None,
    json_summary: bool = typer.Option(
        False, "--json", help="Print the final summary as one JSON line instead of sentences."
    ),
    ray: RayOpt = None,
    workers: WorkersOpt = 1,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
    shard_size: ShardOpt = 64,
    window: WindowOpt = WINDOW,
) -> None:
    """OCR every input into --out (one JSON record per file; inputs already done are skipped)."""
    import dataclasses
    import json

    progress = show_progress(progress)

    from deepsynth.inference.batch_files import (
        OFFLINE_LIMITS,
        ResumeError,
        expand_paths,
        ocr_files,
        run_options,
    )
    from deepsynth.inference.service import ModelLoadError, OCRService
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.observability import Observability

    try:
        files = expand_paths(paths)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="PATHS") from exc
    if not files:
        raise typer.BadParameter("no image or PDF files found in the given paths", param_hint="PATHS")
    spec = f"server:{server}" if server else model
    kwargs = {"token": token, "model": server_model} if server else {}
    gen = GenerationConfig(retry_truncated=retry_truncated)
    if max_new_tokens:
        gen.max_new_tokens = max_new_tokens
    limits = dataclasses.replace(OFFLINE_LIMITS, pdf_dpi=dpi)
    if ray is not None:
        _ocr_on_ray(ray, spec, files, out, kwargs, gen, limits, txt_dir, md_dir, progress,
                    (workers, cpus_per_worker, gpus_per_worker, shard_size, batch_size, window), json_summary)  # fmt: skip
        return
    try:
        service = OCRService(spec, obs=Observability(spec, metrics=False), engine_kwargs=kwargs)
    except ModelLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        summary = ocr_files(
            lambda images: service.recognize(images, gen),
            files,
            out,
            model_id=service.model_id,
            options=run_options(gen, limits),
            txt_dir=txt_dir,
            md_dir=md_dir,
            batch_pages=batch_size,
            limits=limits,
            progress=progress,
        )
    except ResumeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    result = summary.to_dict()
    for err in result["errors"][:20]:
        typer.echo(f"failed: {err['input']}: {err['error']}", err=True)
    if json_summary:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "errors"}))
    else:
        typer.echo(summary.human(out))
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


def _ocr_on_ray(
    address, spec, files, out, kwargs, gen, limits, txt_dir, md_dir, progress, pool, as_json
) -> None:  # noqa: ANN001
    import json

    from deepsynth.cli.ray_options import fail_job, print_stats, ray_options

    opts = ray_options(address, *pool)
    from deepsynth.scale.ocr import ocr_on_ray
    from deepsynth.scale.shards import ShardStoreError

    try:
        stats = ocr_on_ray(spec, files, out, opts=opts, engine_kwargs=kwargs, generation=gen, limits=limits,
                           txt_dir=txt_dir, md_dir=md_dir, progress=progress)  # fmt: skip
    except ShardStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:  # noqa: BLE001 - a Ray failure: its root cause, not Ray's traceback
        fail_job(exc)
    if as_json:
        typer.echo(json.dumps(stats.to_dict()))
    print_stats(stats)
    if stats.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `deepsynth ocr`."""
    app.command("ocr")(ocr)
