"""Fine-tune-and-measure on group-disjoint splits: the shared core of the hard-document benchmark, the learning
curve and the demo's before/after table.

``held_out(source, key="writer")`` splits a labelled set by a group key (writer, page, book) into train / val /
test; ``finetune_and_score(cfg, split, out)`` evaluates the starting model on the test groups, fine-tunes it with
``cfg`` (validation on the val groups only), evaluates the best model on the same test groups and returns both
CERs with 95% bootstrap intervals and the paired CI of the change.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsynth.data import DataReport, Sample, SampleFilter, open_sources
from deepsynth.data.filters import group_key, split_of
from deepsynth.training.config import TrainConfig

# rows the shared sets' READMEs say to leave out of scoring (and so out of test splits)
SCORING_EXCLUDE = ("has_untranscribed", "suspect_abbr_expansion", "has_special_glyph")


@dataclass
class HeldOut:
    """Train / validation / test samples with no group (writer, page, book) in two of them."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    key: str

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def held_out(
    sources: list[str],
    key: str = "page_id",
    *,
    test: float = 0.2,
    val: float = 0.1,
    seed: int = 0,
    exclude_flags: tuple[str, ...] = SCORING_EXCLUDE,
    report: DataReport | None = None,
) -> HeldOut:
    """Split the line samples of ``sources`` by the hash of each sample's ``key`` group: ``test`` and ``val`` are
    shares of groups. With few groups a share can come out empty: then the train group that hashes first moves
    there, so validation and test always hold at least one group."""
    keep = SampleFilter(
        exclude_flags=list(exclude_flags), levels=["line"]
    )  # the recipes train line recognisers
    samples = list(open_sources(sources, filter=keep, report=report))
    split = {g: split_of(g, seed, (1 - test - val, val, test)) for g in {group_key(s, key) for s in samples}}
    for name in ("test", "val"):
        train_groups = sorted(g for g, where in split.items() if where == "train")
        if name not in split.values() and len(train_groups) > 1:
            split[min(train_groups, key=lambda g: _rank(g, seed))] = name
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for s in samples:
        parts[split[group_key(s, key)]].append(s)
    return HeldOut(parts["train"], parts["val"], parts["test"], key)


def _rank(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def finetune_and_score(
    cfg: TrainConfig, split: HeldOut, out: str | Path, *, before_dir: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate the starting model on ``split.test``, fine-tune on ``split.train`` (val: ``split.val``), evaluate
    the best model on the same test samples; returns CERs with CIs, the paired change and training facts.

    ``before_dir`` reuses an evaluation of the starting model already run on the same test samples.
    """
    from deepsynth.training.runtime import build_adapter
    from deepsynth.training.trainer import Trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = build_adapter(cfg)
    before_run = _evaluate_before(adapter, split, out, before_dir)
    t = time.perf_counter()
    result = Trainer(cfg, adapter=adapter, train_samples=split.train, eval_samples=split.val).run()
    train = {
        "steps": result.steps,
        "stopped": result.stopped,
        "best_step": result.best_step,
        "best_val_cer": result.best_metric,
        "seconds": round(time.perf_counter() - t, 1),
        "wall_seconds": result.wall_seconds,
    }
    if result.lm is not None:  # the LM reader's choice on validation
        train["lm"] = {"val_greedy": result.lm["tried"][0]["score"], **result.lm["chosen"]}
    return _score(str(result.best_dir or result.final_dir), split, out, before_run, train)


def reread_with_lm(
    cfg: TrainConfig, split: HeldOut, model_dir: str | Path, out: str | Path, before_dir: str | Path
) -> dict[str, Any]:
    """Copy a fine-tuned ``model_dir`` to ``out/train/best``, fit its LM reader as training with ``cfg.lm`` does
    (``split.train`` texts, weights chosen on ``split.val``) and score it like :func:`finetune_and_score` against
    the starting model's test run in ``before_dir``. The training facts are the source run's."""
    import shutil

    from deepsynth.training.lm_reader import fit_lm_reader

    out, model_dir = Path(out), Path(model_dir)
    best = out / "train" / "best"
    shutil.rmtree(best, ignore_errors=True)
    shutil.copytree(model_dir, best)
    report = fit_lm_reader(best, cfg, split.train, split.val)
    source = model_dir.parents[1] / "summary.json"
    train = dict(json.loads(source.read_text())["train"]) if source.is_file() else {}
    train["reread_from"] = str(model_dir)
    if report is not None:
        train["lm"] = {
            "val_greedy": report["tried"][0]["score"],
            **report["chosen"],
            "seconds": report["seconds"],
        }
    return _score(str(best), split, out, Path(before_dir), train)


def _evaluate_before(adapter: Any, split: HeldOut, out: Path, before_dir: str | Path | None) -> Path:
    from deepsynth.evaluation.harness import evaluate_engine

    before_run = Path(before_dir) if before_dir else out / "eval_before"
    if not (before_run / "metrics.json").is_file():
        evaluate_engine(adapter, split.test, before_run, batch_size=16, progress=False, report=False)
    return before_run


def _score(
    model_dir: str, split: HeldOut, out: Path, before_run: Path, train: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on ``split.test`` against the starting model's run; write ``out/summary.json``."""
    from deepsynth.evaluation.harness import compare_runs, evaluate_engine
    from deepsynth.models.registry import load_engine

    before = json.loads((before_run / "metrics.json").read_text())
    after = evaluate_engine(
        load_engine(model_dir), split.test, out / "eval_after", batch_size=16, progress=False, report=False
    )
    change = compare_runs(before_run, out / "eval_after")["metrics"]["cer"]
    summary = {
        "split": {"key": split.key, **split.counts()},
        "before": {"cer": before["cer"], "cer_ci": before.get("cer_ci"), "wer": before["wer"]},
        "after": {"cer": after["cer"], "cer_ci": after.get("cer_ci"), "wer": after["wer"]},
        "cer_change": change,
        "train": train,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
