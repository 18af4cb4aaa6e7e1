"""`deepsynth bench ...`: measurements a user runs on their own data (learning curve, optical compression)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(
    help="Measure on your data: how many lines to label (learning-curve), text per vision token (compression).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``deepsynth bench`` to the main app."""
    app.add_typer(bench_app, name="bench")


@bench_app.command("learning-curve")
def learning_curve_cmd(
    data: Annotated[
        list[str], typer.Argument(help="Labelled line sources (any format the data layer reads).")
    ],
    key: Annotated[
        str, typer.Option(help="Group key of the splits: writer | page_id | subset | folder ...")
    ] = "page_id",
    sizes: Annotated[str, typer.Option(help="Training-set sizes, comma-separated; 'all' = every line.")] = (
        "25,50,100,200,400,all"
    ),
    minutes: Annotated[
        float, typer.Option(help="Training budget per point (wall clock, evaluation included).")
    ] = 6.0,
    recipe: Annotated[Path, typer.Option(help="Training recipe YAML.")] = Path("configs/ppocr_finetune.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/learning_curve"),
    seed: Annotated[int, typer.Option(help="Seed of the split and of the subsampling.")] = 0,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Recipe override key=value (repeat).")
    ] = None,
) -> None:
    """Fine-tune on 25/50/100/... lines, test on held-out groups: curve.json, curve.png, curve.html."""
    import logging

    from deepsynth.training.learning_curve import learning_curve

    logging.basicConfig(level=logging.WARNING)
    if not recipe.is_file():
        typer.secho(f"error: recipe {recipe} not found", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    size_list = [s.strip() for s in sizes.split(",") if s.strip()]
    bad = [s for s in size_list if s != "all" and not s.isdigit()]
    if bad:
        typer.secho(f"error: --sizes takes whole numbers or 'all', got {bad}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    result = learning_curve(
        data, out, recipe=recipe, key=key, sizes=size_list, minutes=minutes, overrides=overrides or [], seed=seed,
        log=typer.echo,
    )  # fmt: skip
    typer.echo(f"{len(result['points'])} points -> {out}/curve.json, {out}/curve.png, {out}/curve.html")


@bench_app.command("compression")
def compression(
    engine: Annotated[
        str, typer.Option("--engine", "-e", help="Engine spec: deepseek_ocr2:..., ppocr-page, ...")
    ],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Dataset source (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes compression.json/.html/.png here.")],
    mode: Annotated[
        list[str] | None, typer.Option("--mode", help="Image mode (repeatable; default: every mode it has).")
    ] = None,
    level: Annotated[str, typer.Option(help="Rows to read: page, line or all.")] = "page",
    limit: Annotated[
        int | None, typer.Option(help="At most this many samples from each --data source.")
    ] = None,
    bins: Annotated[
        str | None, typer.Option(help="Text-token bin edges, e.g. 600,700,800 (default: about 5 round bins).")
    ] = None,
    normalize: Annotated[
        str, typer.Option("--normalize", "-n", help="Profile for precision and CER.")
    ] = "ocr_standard",
    max_new_tokens: Annotated[int | None, typer.Option(help="Generative engines: output limit.")] = None,
    engine_opt: Annotated[
        list[str] | None, typer.Option("--engine-opt", help="key=value for the engine factory (repeatable).")
    ] = None,
) -> None:
    """Per page and mode: text tokens, vision tokens, compression and precision; the Fox-style table by
    text-token bin."""
    import itertools

    from deepsynth.cli.evaluate import _fail, _parse_opts
    from deepsynth.data import SampleFilter, open_sources
    from deepsynth.evaluation.compression import compression_benchmark, write_compression
    from deepsynth.models.registry import load_engine

    if level not in ("line", "page", "all"):
        _fail(f"--level must be line, page or all, got {level!r}")
    try:
        edges = [int(x) for x in bins.split(",")] if bins else None
        if edges is not None and (len(edges) < 2 or edges != sorted(edges)):
            raise ValueError(f"--bins needs at least two increasing edges, got {bins!r}")
        flt = SampleFilter(levels=None if level == "all" else [level], limit=limit)
        streams = [open_sources([spec], filter=flt) for spec in data]
        eng = load_engine(engine, **_parse_opts(engine_opt))
        result = compression_benchmark(
            eng, itertools.chain.from_iterable(streams), modes=mode, bins=edges, normalize=normalize,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
    files = write_compression(result, out)
    for row in result["table"]:
        cells = " | ".join(
            f"{m}: {c['pages']} p, {100 * c['precision']:.1f}%, "
            + ("–" if c["compression"] is None else f"{c['compression']:.2f}x")
            for m, c in row["modes"].items()
        )
        typer.echo(f"{row['text_tokens']:>10} text tokens | {cells}")
    typer.echo("wrote " + ", ".join(str(f) for f in files))
