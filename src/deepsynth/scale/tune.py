"""`deepsynth tune`: hyperparameter search over a training recipe with Ray Tune (Optuna TPE + ASHA).

Each trial is an ordinary training run, ``deepsynth.training.train(cfg)``, with the trial's values as
``key=value`` overrides of the recipe. It is scored on the recipe's validation split: the test data is never
seen. Every validation is reported to Tune, so ASHA stops the poor trials early. The same command runs on a
laptop (a local Ray runtime on loopback) and on a cluster (``--address``)::

    deepsynth tune configs/ppocr_finetune.yaml --trials 8 --minutes 60 --trial-minutes 10 \\
        data.train=[letters=path/to/lines] data.split_key=writer

It writes ``OUT/trials.json``, a Markdown table ``OUT/trials.md`` and ``OUT/best.yaml``, which is the recipe
with the best trial's values (its first line is the command that runs it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.config import ConfigError

# knob -> (kind, low, high) or ("choice", values); the recipe's knobs that matter most for fine-tuning
DEFAULT_SPACE: dict[str, tuple] = {
    "optim.lr": ("loguniform", 3e-5, 1e-3),
    "optim.warmup_ratio": ("uniform", 0.0, 0.1),
    "augment.p": ("choice", [0.0, 0.5, 0.8]),
    "batch_size": ("choice", [8, 16]),
}


def parse_space(items: Sequence[str]) -> dict[str, tuple]:
    """``key=loguniform:LOW:HIGH``, ``key=uniform:LOW:HIGH`` or ``key=choice:A,B,C`` → a search space."""
    space: dict[str, tuple] = {}
    for item in items:
        key, sep, spec = item.partition("=")
        kind, _, args = spec.partition(":")
        if not sep or not key:
            raise ConfigError(f"--space {item!r}: expected key=kind:args, e.g. optim.lr=loguniform:1e-5:1e-3")
        if kind in ("loguniform", "uniform"):
            try:
                low, high = (float(x) for x in args.split(":"))
            except ValueError as exc:
                raise ConfigError(f"--space {item!r}: {kind} takes LOW:HIGH numbers") from exc
            if not low < high or (kind == "loguniform" and low <= 0):
                raise ConfigError(
                    f"--space {item!r}: need 0 < LOW < HIGH for loguniform, LOW < HIGH for uniform"
                )
            space[key] = (kind, low, high)
        elif kind == "choice":
            values = [_number(v) for v in args.split(",") if v]
            if not values:
                raise ConfigError(f"--space {item!r}: choice needs values, e.g. choice:8,16")
            space[key] = ("choice", values)
        else:
            raise ConfigError(f"--space {item!r}: kind must be loguniform, uniform or choice, got {kind!r}")
    return space


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _ray_space(space: dict[str, tuple]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec[0] == "loguniform":
            out[key] = tune.loguniform(spec[1], spec[2])
        elif spec[0] == "uniform":
            out[key] = tune.uniform(spec[1], spec[2])
        else:
            out[key] = tune.choice(spec[1])
    return out


@dataclass
class TuneJob:
    """Everything a trial needs to build its config (picklable: it travels to the Ray workers)."""

    recipe: str
    overrides: list[str]
    out: str
    trial_minutes: float
    metric: str = "cer"
    space: dict[str, tuple] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    cwd: str = field(default_factory=os.getcwd)  # relative recipe and data paths are the driver's

    def config_for(self, values: dict[str, Any], output_dir: str, *, trial: bool = True) -> Any:
        """The recipe + user overrides + ``values`` (+ the trial's budget when ``trial``)."""
        from deepsynth.config import load_config
        from deepsynth.training.config import TrainConfig

        chosen = [f"{k}={v}" for k, v in values.items()]
        # trials are scored on greedy validation CER: the LM reader is fitted once, by the final run
        trial_only = ["progress=false", "eval.at_start=false", "lm.enabled=false"]
        base = [f"max_minutes={self.trial_minutes}", *trial_only] if trial else []
        return load_config(
            TrainConfig, self.recipe, [*base, *self.overrides, *chosen, f"output_dir={output_dir}"]
        )


def run_trial(values: dict[str, Any], job: TuneJob) -> None:
    """One Tune trial: train with the trial's values, reporting every validation (ASHA may stop it early)."""
    from ray import tune

    from deepsynth.training.trainer import Trainer

    if Path(job.cwd).is_dir():  # Tune starts each trial in its own directory; paths are the user's
        os.chdir(job.cwd)
    trial_dir = Path(job.out) / "trials" / tune.get_context().get_trial_id()
    cfg = job.config_for(values, str(trial_dir))
    reported = 0

    def report(trainer: Trainer) -> None:
        nonlocal reported
        for ev in trainer.result.evals[reported:]:
            tune.report(
                {"val_" + job.metric: float(ev[job.metric]), "step": int(ev.get("step", trainer.step))}
            )
        reported = len(trainer.result.evals)

    trainer = Trainer(cfg, callbacks=[report])
    result = trainer.run()
    report(trainer)  # the final validation happens after the last step's callback
    if not result.evals:
        tune.report({"val_" + job.metric: math.inf, "step": result.steps})


def tune_recipe(
    job: TuneJob, *, trials: int, minutes: float, address: str | None = None, cpus_per_trial: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Run the search; writes trials.json, trials.md and best.yaml in ``job.out`` and returns the summary."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from deepsynth.scale.runtime import connect

    connect(address)
    metric = "val_" + job.metric
    out = Path(job.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=job), {"cpu": cpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space=_ray_space(job.space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="min",
            num_samples=trials,
            time_budget_s=minutes * 60,
            search_alg=OptunaSearch(seed=seed),
            scheduler=ASHAScheduler(
                time_attr="training_iteration", max_t=64, grace_period=2, reduction_factor=2
            ),
        ),  # fmt: skip
        run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        if r.metrics is None or metric not in (r.metrics or {}):
            rows.append({"trial": _trial_id(r.path), "params": r.config, "status": "error", metric: None})
            continue
        best_seen = (
            r.metrics_dataframe[metric].min() if r.metrics_dataframe is not None else r.metrics[metric]
        )
        rows.append({
            "trial": _trial_id(r.path), "params": r.config, metric: float(best_seen),
            "validations": int(r.metrics.get("training_iteration", 0)), "last_step": int(r.metrics.get("step", 0)),
            "status": "error" if r.error else "done",
        })  # fmt: skip
    scored = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    if not scored:
        raise RuntimeError(f"no trial produced a validation score; see {out / 'ray'}")
    scored.sort(key=lambda r: r[metric])
    best = scored[0]
    summary = {
        "metric": metric,
        "trials": rows,
        "best": best,
        "space": {k: list(v) for k, v in job.space.items()},
    }
    (out / "trials.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "trials.md").write_text(trials_table(rows, metric) + "\n")
    write_best(job, best["params"], out / "best.yaml")
    return summary


def _trial_id(path: str) -> str:
    """``run_trial_7e78c09e_1_augment_p=0.5,...`` -> ``7e78c09e_1`` (the values have their own columns)."""
    parts = Path(path).name.split("_")
    return "_".join(parts[2:4]) if len(parts) > 3 and parts[:2] == ["run", "trial"] else Path(path).name


def trials_table(rows: list[dict[str, Any]], metric: str) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", *keys, metric, "validations", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r[metric] is None, r[metric] or 0.0)):
        vals = [_fmt(r["params"].get(k)) for k in keys]
        score = f"{100 * r[metric]:.2f}%" if r[metric] is not None and math.isfinite(r[metric]) else "-"
        lines.append(
            "| " + " | ".join([r["trial"], *vals, score, str(r.get("validations", "-")), r["status"]]) + " |"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_best(job: TuneJob, params: dict[str, Any], path: Path) -> None:
    """The recipe with the best values applied, as YAML whose first line is the command that runs it."""
    import yaml

    from deepsynth.config import to_dict

    cfg = job.config_for(params, "runs/tuned", trial=False)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
    path.write_text(f"# deepsynth train {path}\n# tuned from {job.recipe}: {values}\n{text}")
