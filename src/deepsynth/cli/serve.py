"""`deepsynth serve` (HTTP API) and `deepsynth demo-ui` (Gradio web demo)."""

from __future__ import annotations

import typer


def serve(
    model: str = typer.Option(
        ..., "--model", "-m", help="Engine spec or saved model dir: rapidocr, ppocr:runs/x/best"
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Bind address (0.0.0.0 to listen on all interfaces)."
    ),
    port: int = typer.Option(8000, "--port"),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="Images per model batch."),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", min=0, help="How long a batch waits to fill up."
    ),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Waiting images before answering 429."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Per-request timeout in seconds."),
    token: str | None = typer.Option(
        None, "--token", envvar="DEEPSYNTH_API_TOKEN", help="Require 'Authorization: Bearer TOKEN' on /v1/*."
    ),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb"),
    max_pages: int = typer.Option(50, "--max-pages", help="Pages (images + PDF pages) per request."),
    pdf_dpi: float = typer.Option(150.0, "--pdf-dpi"),
    max_new_tokens: int = typer.Option(
        512, "--max-new-tokens", help="Generative models: default output limit."
    ),
    retry_truncated: int = typer.Option(
        0, "--retry-truncated", help="olmOCR-style retries for cut-off outputs."
    ),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup"),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="PyTorch intra-op threads for the model (default: torch's, = all cores). On a small CPU box use "
        "fewer than the cores so HTTP parsing does not stall the model's OpenMP threads.",
    ),
    model_process: bool = typer.Option(
        True,
        "--model-process/--in-process",
        help="Run the model in its own process (HTTP parsing and the model then never wait on one GIL); "
        "--in-process keeps everything in one process.",
    ),
) -> None:
    """Serve a model over HTTP: /v1/ocr, OpenAI-compatible /v1/chat/completions, /metrics."""
    from deepsynth.inference.model_process import ProcessEngine
    from deepsynth.inference.server import ServerSettings, run
    from deepsynth.inference.service import ModelLoadError, OCRService
    from deepsynth.models.generation import GenerationConfig

    if threads and not model_process:
        import torch  # set before the model loads; the batcher's worker thread picks it up when it starts

        torch.set_num_threads(threads)

    gen = GenerationConfig(max_new_tokens=max_new_tokens, retry_truncated=retry_truncated)
    try:
        engine = ProcessEngine(model, threads=threads) if model_process else model
        service = OCRService(
            engine,
            model_id=model,
            owns_engine=True,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            timeout_s=timeout_s,
            generation=gen,
        )
    except ModelLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    settings = ServerSettings(
        host=host,
        port=port,
        token=token,
        max_upload_mb=max_upload_mb,
        max_pages=max_pages,
        pdf_dpi=pdf_dpi,
        warmup=warmup,
    )
    run(service, settings)


def demo_ui(
    model: list[str] = typer.Option(
        ["rapidocr:page"], "--model", "-m", help="Engine spec(s) to offer (repeatable)."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7860, "--port"),
    pdf_dpi: float = typer.Option(150.0, "--pdf-dpi"),
) -> None:
    """Gradio web demo: upload an image or PDF, pick a model, see the text and timings."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from deepsynth.inference.web_demo import build_demo

    demo = build_demo(model, pdf_dpi=pdf_dpi)
    demo.launch(server_name=host, server_port=port)


def register(app: typer.Typer) -> None:
    """Add `deepsynth serve` and `deepsynth demo-ui`."""
    app.command("serve")(serve)
    app.command("demo-ui")(demo_ui)
