"""`deepsynth serve` (HTTP API) and `deepsynth demo-ui` (Gradio web demo)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from deepsynth import envs
from deepsynth.cli.console import DEFAULT_ENGINE
from deepsynth.inference.limits import ServingLimits

if TYPE_CHECKING:
    from deepsynth.models.base import OCREngine

_LIMITS = ServingLimits()


def _limit(name: str, flag: str, **kwargs) -> typer.models.OptionInfo:
    """A `deepsynth serve` option for one ServingLimits field (its default and help come from there)."""
    return typer.Option(
        getattr(_LIMITS, name), flag, help=ServingLimits.help(name), rich_help_panel="Limits", **kwargs
    )


def serve(
    model: list[str] = typer.Option(
        [DEFAULT_ENGINE],
        "--model",
        "-m",
        help="Engine spec or saved model dir (rapidocr, ppocr:runs/x/best), a registered model "
        "(models:/NAME@ALIAS, followed when the alias moves; models:/NAME/VERSION), or NAME=SPEC; repeat to "
        "serve several models, each with its own queue.",
    ),
    default_model: str | None = typer.Option(
        None, "--default-model", help="Model for requests that name none (default: the first --model)."
    ),
    served_model_name: str | None = typer.Option(
        None,
        "--served-model-name",
        help="Name of the model given as a bare SPEC (default: the spec itself); clients send it as 'model'.",
    ),
    routing: Path | None = typer.Option(
        None,
        "--routing",
        help="Routing table YAML: {routes: {DOC_TYPE: MODEL}, default: MODEL}; a request's doc_type picks its "
        "model when it names none.",
    ),
    lora: list[str] = typer.Option(
        [],
        "--lora",
        help="NAME=DIR: a saved LoRA model directory served as model NAME on the first --model's weights (a VLM; "
        "repeatable). The adapters share one copy of the base, in its process, and one batch mixes them.",
    ),
    enable_lora: bool = typer.Option(
        False,
        "--enable-lora",
        help="Serve LoRA adapters on the first --model even with no --lora (POST /admin/models adds them).",
    ),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking/registry URI that models:/ specs are read from (default: $MLFLOW_TRACKING_URI; "
        "`deepsynth loop` writes to sqlite:///WORKDIR/mlflow.db).",
        rich_help_panel="Model registry",
    ),
    registry_poll: float = typer.Option(
        30.0,
        "--registry-poll",
        min=0,
        help="Seconds between checks of each models:/NAME@ALIAS alias; when it has moved the model is reloaded "
        "without dropping a request (0: only on POST /admin/reload).",
        rich_help_panel="Model registry",
    ),
    max_loras: int = typer.Option(
        4,
        "--max-loras",
        min=1,
        help="LoRA adapters kept loaded at once; more are loaded on use, LRU evicted.",
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
    timeout_s: float = _limit("request_timeout_s", "--timeout", min=0.001),
    model_timeout_s: float = _limit("model_timeout_s", "--model-timeout", min=0),
    model_max_rss_mb: float = _limit("model_max_rss_mb", "--model-max-rss-mb", min=0),
    drain_timeout_s: float = _limit("drain_timeout_s", "--drain-timeout", min=0),
    token: str | None = typer.Option(
        None,
        "--token",
        "--api-key",
        help="Require 'Authorization: Bearer TOKEN' on /v1/* (default: $DEEPSYNTH_API_TOKEN); --api-key is "
        "vLLM's name for it.",
    ),
    max_upload_mb: float = _limit("max_upload_mb", "--max-upload-mb", min=0),
    max_pages: int = _limit("max_pages", "--max-pages", min=1),
    max_pixels: int = _limit("max_pixels", "--max-pixels", min=1),
    max_request_pixels: int = _limit("max_request_pixels", "--max-request-pixels", min=1),
    max_model_pixels: int = _limit("max_model_pixels", "--max-model-pixels", min=1),
    max_aspect_ratio: float = _limit("max_aspect_ratio", "--max-aspect-ratio", min=1),
    pdf_dpi: float = _limit("pdf_dpi", "--pdf-dpi", min=36, max=600),
    max_new_tokens: int = typer.Option(
        512, "--max-new-tokens", help="Generative models: default output limit."
    ),
    retry_truncated: int = typer.Option(
        0, "--retry-truncated", help="olmOCR-style retries for cut-off outputs."
    ),
    feedback_dir: Path | None = typer.Option(
        None,
        "--feedback-dir",
        help="Store corrections posted to POST /v1/feedback here, as labelled data the improvement loop's inbox "
        "reads, and keep each request's input for DEEPSYNTH_FEEDBACK_KEEP_INPUTS_HOURS (personal data: "
        "docs/privacy.md). Default: $DEEPSYNTH_FEEDBACK_DIR; unset: feedback is refused.",
    ),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup"),
    docs: bool = typer.Option(
        False,
        "--docs/--no-docs",
        help="Serve Swagger UI at /docs (its assets load from a CDN, so off by default; /openapi.json is "
        "always served).",
    ),
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
        "--in-process keeps everything in one process (then --model-timeout and --model-max-rss-mb cannot "
        "stop a batch: they need the model process).",
    ),
) -> None:
    """Serve a model over HTTP: /v1/ocr, OpenAI-compatible /v1/chat/completions, /metrics.

    Every limit (see the Limits options) is also shown by GET /v1/models."""
    from deepsynth.cli.console import ensure_port_free
    from deepsynth.inference.api import ServerSettings, run
    from deepsynth.inference.limits import engine_geometry
    from deepsynth.inference.model_process import ProcessEngine
    from deepsynth.inference.pool import ModelPool, RoutingTable, ServedModel, build_model
    from deepsynth.inference.service import ModelLoadError, OCRService, load_model
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.models.registered import RegistryError, RegistryReader, is_model_uri
    from deepsynth.models.registered import tracking_uri as registry_uri
    from deepsynth.observability.feedback import FeedbackSettings

    ensure_port_free(host, port)  # before the model loads: a busy port is a one-line error
    try:  # a bad feedback variable is an error before the model loads
        feedback = FeedbackSettings.from_env(os.environ, feedback_dir)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if envs.DEEPSYNTH_LOG_FORMAT.lower() == "json":
        from deepsynth.observability.logging import hide_library_progress_bars

        hide_library_progress_bars()  # before the model process starts: it inherits the environment
    if threads and not model_process:
        import torch  # set before the model loads; the batcher's worker thread picks it up when it starts

        torch.set_num_threads(threads)

    limits = ServingLimits(
        max_upload_mb=max_upload_mb,
        max_pages=max_pages,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        max_model_pixels=max_model_pixels,
        max_aspect_ratio=max_aspect_ratio,
        pdf_dpi=pdf_dpi,
        request_timeout_s=timeout_s,
        model_timeout_s=model_timeout_s,
        model_max_rss_mb=model_max_rss_mb,
        drain_timeout_s=drain_timeout_s,
    )
    gen = GenerationConfig(max_new_tokens=max_new_tokens, retry_truncated=retry_truncated)

    def make_service(name: str, spec: str, lora: dict[str, str] | None = None) -> OCRService:
        """One model's service: its own engine (own process unless --in-process), queue and batcher;
        ``lora``: the model is a LoRA base serving these adapters."""
        engine: OCREngine | ProcessEngine
        if model_process:
            engine = ProcessEngine(
                spec,
                threads=threads,
                timeout_s=limits.model_budget_s,
                max_rss_mb=limits.model_max_rss_mb,
                lora=lora,
                max_loras=max_loras,
            )
        else:
            engine = load_model(spec)
            if lora is not None:
                from deepsynth.models.vlm.multi_lora import LoraSet

                engine = LoraSet.over(engine, lora, max_loras)
        return OCRService(
            engine,
            model_id=name,
            owns_engine=True,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            timeout_s=limits.request_timeout_s,
            generation=gen,
            geometry=engine_geometry(spec),
        )

    try:
        specs = model_specs(model, served_model_name)
        table = RoutingTable.from_yaml(routing) if routing else None
        # check the names before loading anything (a routing typo must not cost a model load)
        adapters = model_specs(lora) if lora else {}
        if set(adapters) & set(specs):
            raise ValueError(f"--lora names {sorted(set(adapters) & set(specs))} are also --model names")
        ModelPool.check_names(set(specs) | set(adapters), default=default_model, routing=table)
        uri = registry_uri(tracking_uri)
        registered = [spec for spec in specs.values() if is_model_uri(spec)]
        registry = RegistryReader(uri) if uri and (registered or tracking_uri) else None
        if registered and registry is None:
            raise RegistryError(f"{registered[0]}: give --tracking-uri (or set MLFLOW_TRACKING_URI)")
        for spec in registered:  # every alias resolves before any model loads
            registry.resolve(spec)
        services: dict[str, ServedModel] = {}
        for i, (name, spec) in enumerate(specs.items()):
            lora_base = i == 0 and (bool(adapters) or enable_lora)  # its weights are shared by the adapters
            lora = adapters if lora_base else None
            entry = build_model(name, spec, lambda n, s, lora=lora: make_service(n, s, lora), registry)
            services[name] = entry
            for adapter, path in adapters.items() if lora_base else ():
                services[adapter] = ServedModel(adapter, entry.service.adapter_view(adapter), path, name)
        pool = ModelPool(
            services, default=default_model, routing=table, factory=make_service, registry=registry
        )
    except (ModelLoadError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    token = token or envs.DEEPSYNTH_API_TOKEN
    settings = ServerSettings(
        host=host,
        port=port,
        token=token,
        warmup=warmup,
        limits=limits,
        docs=docs,
        feedback=feedback,
        registry_poll_s=registry_poll,
    )
    run(pool, settings)


def model_specs(options: list[str], served_model_name: str | None = None) -> dict[str, str]:
    """``--model`` values → {name: spec}; a bare SPEC is named by ``--served-model-name`` or by itself."""
    from deepsynth.inference.pool import parse_model_option

    specs: dict[str, str] = {}
    bare = [value for value in options if parse_model_option(value)[0] is None]
    if served_model_name and len(bare) != 1:
        raise ValueError(
            f"--served-model-name names the one --model given as a bare SPEC; got {len(bare)} bare specs "
            "(name each model as NAME=SPEC instead)"
        )
    for value in options:
        name, spec = parse_model_option(value)
        name = name or served_model_name or spec
        if name in specs:
            raise ValueError(f"--model: the name {name!r} is given twice")
        specs[name] = spec
    return specs


def demo_ui(
    model: list[str] = typer.Option(
        [DEFAULT_ENGINE], "--model", "-m", help="Engine spec(s) to offer (repeatable)."
    ),
    compare: str | None = typer.Option(
        None, "--compare", help="A second engine spec, shown side by side with the first (e.g. a fine-tune)."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7860, "--port"),
    pdf_dpi: float = typer.Option(150.0, "--pdf-dpi"),
) -> None:
    """Gradio web demo: upload an image or PDF, see the text, the line boxes (click one to read it) and the
    timings; with --compare, two models side by side with their differences marked."""

    from deepsynth.cli.console import ensure_port_free

    ensure_port_free(host, port)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from deepsynth.inference.web_demo import build_demo

    demo = build_demo(model, compare=compare, pdf_dpi=pdf_dpi)
    demo.launch(server_name=host, server_port=port)


def register(app: typer.Typer) -> None:
    """Add `deepsynth serve` and `deepsynth demo-ui`."""
    app.command("serve")(serve)
    app.command("demo-ui")(demo_ui)
