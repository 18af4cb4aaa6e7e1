"""How many lines must a user label? Fine-tune on 25, 50, 100, ... training lines and plot test CER against the
count (same recipe, same group-disjoint test split, same time budget per point).

    deepsynth bench learning-curve ../shared/data/testaments_poilus_fr_hw --key writer --minutes 6
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig
from deepsynth.training.experiment import HeldOut, finetune_and_score, held_out

DEFAULT_SIZES = ("25", "50", "100", "200", "400", "all")


def subsample(split: HeldOut, n: int | None, seed: int) -> HeldOut:
    """The same split with ``n`` training lines drawn at random (seeded); None = all of them."""
    train = split.train if n is None or n >= len(split.train) else random.Random(seed).sample(split.train, n)
    return HeldOut(train, split.val, split.test, split.key)


def learning_curve(
    sources: list[str],
    out: str | Path,
    *,
    recipe: str | Path,
    key: str = "page_id",
    sizes: Sequence[str] = DEFAULT_SIZES,
    minutes: float = 6.0,
    overrides: Sequence[str] = (),
    seed: int = 0,
    log: Any = print,
) -> dict[str, Any]:
    """Run one fine-tune per training-set size; writes ``curve.json``, ``curve.png`` and ``curve.html`` in ``out``."""
    out = Path(out)
    split = held_out(list(sources), key=key, seed=seed)
    log(f"split by {key!r}: {split.counts()}")
    points: list[dict[str, Any]] = []
    before = out / "eval_before"
    for size in sizes:
        n = None if size == "all" else int(size)
        if n is not None and n > len(split.train):
            log(f"skipping {n}: only {len(split.train)} training lines")
            continue
        part = subsample(split, n, seed)
        run = out / f"n{len(part.train)}"
        cfg = load_config(
            TrainConfig,
            recipe,
            [f"output_dir={run / 'train'}", f"max_minutes={minutes}", "progress=false", *overrides],
        )
        s = finetune_and_score(cfg, part, run, before_dir=before if before.is_dir() else None)
        if not before.is_dir():
            (run / "eval_before").rename(before)
        point = {"n_train": len(part.train), **s}
        points.append(point)
        log(
            f"{len(part.train):>5} lines: test CER {s['after']['cer']:.2%} "
            f"(95% CI {_ci(s['after'])}; shipped {s['before']['cer']:.2%}), {s['train']['steps']} steps"
        )
        _write(out, sources, key, minutes, points)
    return _write(out, sources, key, minutes, points)


def _ci(m: dict[str, Any]) -> str:
    ci = m.get("cer_ci")
    return f"{ci[0]:.2%}-{ci[1]:.2%}" if ci else "n/a"


def _write(out: Path, sources: Sequence[str], key: str, minutes: float, points: list[dict]) -> dict[str, Any]:
    result = {"sources": list(sources), "split_key": key, "minutes_per_point": minutes, "points": points}
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if points:
        plot(result, out / "curve.png")
        rows = "".join(
            f"<tr><td>{p['n_train']}</td><td>{p['after']['cer']:.2%}</td><td>{_ci(p['after'])}</td>"
            f"<td>{p['train']['steps']}</td></tr>"
            for p in points
        )
        (out / "curve.html").write_text(
            "<!doctype html><meta charset='utf-8'><title>Learning curve</title>"
            f"<h1>Test CER vs training lines</h1><p>{', '.join(sources)}, split by {key}; shipped model "
            f"{points[0]['before']['cer']:.2%}; {minutes:g} min per point.</p><img src='curve.png' width='640'>"
            f"<table border=1 cellpadding=4><tr><th>lines</th><th>CER</th><th>95% CI</th><th>steps</th></tr>"
            f"{rows}</table>"
        )
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Test CER (with its 95% CI) against the number of training lines, the shipped model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    xs = [p["n_train"] for p in pts]
    ys = [100 * p["after"]["cer"] for p in pts]
    lo = [100 * (p["after"]["cer"] - p["after"]["cer_ci"][0]) for p in pts]
    hi = [100 * (p["after"]["cer_ci"][1] - p["after"]["cer"]) for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label="fine-tuned (95% CI)")
    ax.axhline(100 * pts[0]["before"]["cer"], color="gray", ls="--", label="shipped PP-OCRv6")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training lines")
    ax.set_ylabel("test CER (%)")
    ax.set_title("How many lines to label?")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
