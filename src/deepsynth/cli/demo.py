"""`deepsynth demo` (what `make demo` runs): evaluate, fine-tune, re-evaluate the embedded PP-OCRv6 model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``deepsynth demo`` to the main app."""

    @app.command("demo")
    def demo(
        overrides: Annotated[
            list[str] | None, typer.Argument(help="Training overrides as key=value (e.g. max_minutes=3).")
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Output directory (rewritten each run).")
        ] = Path("runs/demo"),
        config: Annotated[str, typer.Option("--config", help="Training recipe.")] = "configs/ppocr_demo.yaml",
        data: Annotated[
            str, typer.Option("--data", help="Line dataset split by book.")
        ] = "examples/gt4histocr_dta19",
    ) -> None:
        """Fine-tune PP-OCRv6 on 19th-century Fraktur lines: before/after CER on unseen books (~10 min, 2 CPUs)."""
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        from deepsynth.training.demo import run_demo

        try:
            run_demo(out, config=config, data=data, overrides=list(overrides or []))
        except (FileExistsError, FileNotFoundError, ValueError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
