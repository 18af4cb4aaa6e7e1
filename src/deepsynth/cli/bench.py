"""`deepsynth bench ...`: measurements a user runs on their own data (learning curve)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(
    help="Measure on your data: how many lines to label (learning-curve).", no_args_is_help=True
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
