"""`deepsynth tune CONFIG [key=value ...]`: hyperparameter search over a recipe with Ray Tune (Optuna TPE + ASHA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``deepsynth tune`` to the main app."""

    @app.command("tune")
    def tune(
        config: Annotated[Path, typer.Argument(help="Training recipe YAML (configs/*.yaml).")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Recipe overrides as key=value.")] = None,
        trials: Annotated[int, typer.Option(help="Number of trials.")] = 8,
        minutes: Annotated[float, typer.Option(help="Wall-clock budget of the whole search.")] = 60.0,
        trial_minutes: Annotated[
            float, typer.Option(help="Training budget of one trial (max_minutes).")
        ] = 10.0,
        space: Annotated[
            list[str] | None,
            typer.Option(
                help="Search space entry key=loguniform:LO:HI | uniform:LO:HI | choice:A,B (repeat). "
                "Default: optim.lr, optim.warmup_ratio, augment.p, batch_size."
            ),
        ] = None,  # fmt: skip
        metric: Annotated[str, typer.Option(help="Validation metric to minimise: cer | wer.")] = "cer",
        address: Annotated[
            str | None, typer.Option(help="Ray cluster (ray://host:10001, auto); default local.")
        ] = None,
        cpus_per_trial: Annotated[float, typer.Option(help="CPUs reserved per trial.")] = 1.0,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/tune"),
        seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    ) -> None:
        """Search the recipe's knobs on its validation split: trials.md, trials.json and best.yaml in --out."""
        from deepsynth.config import ConfigError

        try:
            from deepsynth.scale.tune import DEFAULT_SPACE, TuneJob, parse_space, tune_recipe
        except ImportError as exc:
            typer.secho(f"error: deepsynth tune needs Ray Tune and Optuna: pip install 'deepsynth[scale]' ({exc})",
                        fg=typer.colors.RED, err=True)  # fmt: skip
            raise typer.Exit(2) from exc
        if metric not in ("cer", "wer"):
            typer.secho(f"error: --metric must be cer or wer, got {metric!r}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        try:
            job = TuneJob(str(config), list(overrides or []), str(out), trial_minutes, metric,
                          parse_space(space) if space else dict(DEFAULT_SPACE))  # fmt: skip
            job.config_for({}, str(out / "check"))  # a bad recipe or override fails here, before Ray starts
        except (ConfigError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(
            f"tuning {config}: {trials} trials, {minutes:g} min in all, {trial_minutes:g} min per trial"
        )
        summary = tune_recipe(job, trials=trials, minutes=minutes, address=address, cpus_per_trial=cpus_per_trial,
                              seed=seed)  # fmt: skip
        typer.echo((out / "trials.md").read_text())
        best = summary["best"]
        typer.echo(f"best {summary['metric']} {100 * best[summary['metric']]:.2f}% with {best['params']}")
        typer.echo(f"-> {out / 'best.yaml'} (deepsynth train {out / 'best.yaml'})")
