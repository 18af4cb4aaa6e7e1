"""`make demo` / `deepsynth demo`: the whole flow on the embedded PP-OCRv6 recogniser, offline, on 2 CPU cores.

1. split examples/gt4histocr_dta19 (19th-century Fraktur, CC BY 4.0) by book into train / val / test;
2. evaluate the shipped model on the test books (``evaluate_engine`` → predictions, metrics, HTML report);
3. fine-tune it (configs/ppocr_demo.yaml: full fine-tune, low LR, BatchNorm frozen, charset + ``ſ`` and
   combining e, early stopping on val CER, best checkpoint kept);
4. evaluate the best checkpoint on the same unseen test books, print a before/after table with a paired
   bootstrap confidence interval, and say how to serve the result.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[3]
DEMO_CONFIG = "configs/ppocr_demo.yaml"
DEMO_DATA = "examples/gt4histocr_dta19"
MARKER = ".deepsynth-demo"
# the second profile folds historical letterforms (ſ → s, combining e stays) to show what is left besides ſ
PROFILES = (("none", "CER, strict (ſ ≠ s)"), ("nfkc", "CER, NFKC (ſ = s)"))


def _find(path: str) -> Path:
    """``path`` relative to the working directory, else to the repository this package lives in."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return REPO / path if (REPO / path).exists() else p


def _score(run_dir: Path, profile: str) -> dict[str, Any]:
    from deepsynth.evaluation.harness import load_run, score_records

    _, records = load_run(run_dir)
    summary, _ = score_records(records, profile, bootstrap=0)
    return summary


def run_demo(
    out: str | Path = "runs/demo",
    *,
    config: str | Path = DEMO_CONFIG,
    data: str | Path = DEMO_DATA,
    overrides: Sequence[str] = (),
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``out/demo_summary.json``) the before/after numbers."""
    from rich.console import Console

    from deepsynth.data import DataReport, open_sources
    from deepsynth.evaluation.harness import compare_runs, evaluate_engine
    from deepsynth.models.registry import load_engine
    from deepsynth.training.data import sample_filter
    from deepsynth.training.runtime import build_adapter
    from deepsynth.training.trainer import Trainer

    console = console or Console()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the demo output to our own progress bars
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} exists and was not written by `deepsynth demo`; choose another --out"
            )
        shutil.rmtree(out)  # a previous demo run: start clean
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by deepsynth demo; deleted and rewritten by the next demo run\n")
    data_path = _find(str(data))
    cfg = load_config(
        TrainConfig,
        _find(str(config)),
        [f"output_dir={out}", f"data.train=[{data_path}]", *overrides],
    )
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    report = DataReport()
    test = list(open_sources([str(data_path)], filter=sample_filter(cfg.data, "test", None), report=report))
    books = {split: sorted({s.subset for s in open_sources([str(data_path)], filter=sample_filter(cfg.data, split, None))})
             for split in ("train", "val", "test")}  # fmt: skip
    console.rule("[bold]DeepSynth demo: fine-tune PP-OCRv6 on 19th-century Fraktur")
    console.print(
        f"data: {data_path} split by book: {len(books['train'])} train / {len(books['val'])} val / "
        f"{len(books['test'])} test books ({len(test)} test lines, never trained on)"
    )

    console.print("[bold]1/3[/] evaluating the shipped model on the test books ...")
    adapter = build_adapter(cfg)
    t = time.perf_counter()
    before = evaluate_engine(adapter, test, out / "eval_before", batch_size=16, dataset=str(data_path))
    t_before = time.perf_counter() - t

    console.print(f"[bold]2/3[/] fine-tuning ({cfg.output_dir}; tensorboard --logdir {cfg.output_dir}) ...")
    t = time.perf_counter()
    trainer = Trainer(cfg, adapter=adapter)
    result = trainer.run()
    t_train = time.perf_counter() - t

    console.print("[bold]3/3[/] evaluating the fine-tuned model on the same test books ...")
    model_dir = result.best_dir or result.final_dir
    tuned = load_engine(str(model_dir))
    t = time.perf_counter()
    after = evaluate_engine(tuned, test, out / "eval_after", batch_size=16, dataset=str(data_path))
    t_after = time.perf_counter() - t
    comparison = compare_runs(out / "eval_before", out / "eval_after")

    rows = []
    for profile, label in PROFILES:
        b, a = _score(out / "eval_before", profile)["cer"], _score(out / "eval_after", profile)["cer"]
        rows.append({"metric": label, "before": b, "after": a})
    rows.append({"metric": "WER, strict", "before": before["wer"], "after": after["wer"]})
    rows.append({"metric": "exact lines", "before": before["exact_match"], "after": after["exact_match"]})
    summary = {
        "test_books": books["test"],
        "n_test_lines": len(test),
        "rows": rows,
        "cer_delta_ci95": comparison["metrics"]["cer"],
        "train": {
            "steps": result.steps,
            "stopped": result.stopped,
            "best_step": result.best_step,
            "best_val_cer": result.best_metric,
            "added_chars": trainer.added_chars,
            "seconds": round(t_train, 1),
        },
        "seconds": {
            "eval_before": round(t_before, 1),
            "train": round(t_train, 1),
            "eval_after": round(t_after, 1),
            "total": round(time.perf_counter() - t0, 1),
        },  # fmt: skip
        "model_dir": str(model_dir),
        "reports": [str(out / "eval_before" / "report.html"), str(out / "eval_after" / "report.html")],
    }
    (out / "demo_summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n"
    )
    print_summary(summary, console)
    return summary


def print_summary(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"PP-OCRv6 on {summary['n_test_lines']} lines of {len(summary['test_books'])} unseen books"
    )
    for col in ("metric", "shipped model", "fine-tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in summary["rows"]:
        b, a = r["before"], r["after"]
        rel = f"{(a - b) / b:+.0%}" if b else ""
        table.add_row(r["metric"], f"{b:.2%}", f"{a:.2%}", f"{100 * (a - b):+.2f} pt {rel}")
    console.print(table)
    ci = summary.get("cer_delta_ci95") or {}
    if ci.get("ci_low") is not None:
        lo, hi = ci["ci_low"], ci["ci_high"]
        console.print(f"CER change, 95% paired bootstrap interval: [{100 * lo:+.2f}, {100 * hi:+.2f}] points")
    tr, sec = summary["train"], summary["seconds"]
    console.print(
        f"training: {tr['steps']} steps ({tr['stopped']}), best val CER {tr['best_val_cer']:.2%} at step "
        f"{tr['best_step']}, new characters {''.join(tr['added_chars']) or '-'}; wall time {sec['total']:.0f} s "
        f"(eval {sec['eval_before']:.0f} s + train {sec['train']:.0f} s + eval {sec['eval_after']:.0f} s)"
    )
    console.print("reports: " + "  ".join(summary["reports"]))
    console.print(f"[bold green]serve it:[/] deepsynth serve --model {summary['model_dir']}")
