"""`deepsynth train CONFIG [key=value ...]`: run a training recipe (one process, or under `accelerate launch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepsynth.cli.console import ProgressOpt, show_progress


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def register(app: typer.Typer) -> None:
    """Add ``deepsynth train`` to the main app."""

    @app.command("train")
    def train(
        config: Annotated[
            Path, typer.Argument(help="Recipe YAML (configs/*.yaml); its first line is the command.")
        ],
        overrides: Annotated[
            list[str] | None,
            typer.Argument(help="Overrides as key=value, e.g. optim.lr=5e-5 max_steps=200 lora.enabled=true"),
        ] = None,
        resume: Annotated[
            bool,
            typer.Option("--resume", help="Continue from the last checkpoint in output_dir (= resume=true)."),
        ] = False,
        print_config: Annotated[
            bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")
        ] = False,
        progress: ProgressOpt = None,
    ) -> None:
        """Fine-tune a model: full or LoRA, with evaluation, early stopping, checkpoints and trackers.

        Multi-process (DDP): accelerate launch --num_processes 2 -m deepsynth.cli.main train CONFIG
        """
        import logging

        import yaml

        from deepsynth.config import ConfigError, load_config, to_dict
        from deepsynth.training.config import TrainConfig

        items = list(overrides or []) + (["resume=true"] if resume else [])
        if not show_progress(progress):  # --no-progress, or stderr is a log file: no carriage-return bars
            items.append("progress=false")
        try:
            cfg = load_config(TrainConfig, config, items)
        except ConfigError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        if print_config:
            typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
            return
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from tqdm.contrib.logging import logging_redirect_tqdm

        from deepsynth.observability.logging import hide_library_progress_bars
        from deepsynth.training.trainer import train as run_training

        hide_library_progress_bars()  # "Writing model shards" bars would cut through the training bar
        try:
            with logging_redirect_tqdm():  # log lines (one per evaluation) print above the bar
                result = run_training(cfg)
        except (FileExistsError, FileNotFoundError, ValueError, TypeError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"done: {result.steps} steps ({result.stopped}) in {result.wall_seconds:.0f} s")
        if result.evals:
            m, first = cfg.eval.metric, result.evals[0]
            typer.echo(f"{m}: {_pct(first.get(m))} at step {first.get('step')} -> best {_pct(result.best_metric)} "
                       f"at step {result.best_step} ({len(result.evals)} evaluations)")  # fmt: skip
        if result.skipped_samples:
            typer.echo(
                f"skipped {result.skipped_samples} bad sample(s): see {result.run_dir}/data_report.json"
            )
        model = result.best_dir or result.final_dir
        if model:
            typer.echo(f"model: {model}   serve it: deepsynth serve --model {model}")
