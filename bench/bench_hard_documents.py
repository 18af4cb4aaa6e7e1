"""Fine-tuning where the shipped model fails: the default recipe on every shared set, group-disjoint test splits.

For each set: split by writer / book / page (test 20% of groups, val 10%, never seen by any recipe choice),
evaluate the shipped PP-OCRv6 recogniser on the test groups, fine-tune it with ``configs/ppocr_finetune.yaml``
under a wall-clock budget, evaluate the best model on the same test lines. Reported statistic: corpus CER with its
95% bootstrap interval (lines resampled) before and after, and the paired bootstrap CI of the change.

    python -m bench.bench_hard_documents                      # every set, 20-minute budget each
    python -m bench.bench_hard_documents poilus --minutes 10 optim.lr=3e-4   # one set, recipe overrides
    python -m bench.bench_hard_documents poilus --label X_lm --reread X        # run X's model + the LM reader
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig
from deepsynth.training.experiment import finetune_and_score, held_out, reread_with_lm

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "hard_documents.json"
RECIPE = ROOT / "configs" / "ppocr_finetune.yaml"
# set name -> (folder, group key that keeps writers / books / pages out of two splits)
SETS = {
    "poilus": ("testaments_poilus_fr_hw", "writer"),
    "stanford": ("stanford_memorials_en_hw", "folder"),
    # the same letters split by page: the hands of the test pages are in training too ("your own documents")
    "stanford_pages": ("stanford_memorials_en_hw", "page_id"),
    "typewriter": ("tapuscorpus_fr", "page_id"),
    "fraktur": ("gt4histocr_dta19_lines", "subset"),
    "print": ("fondue_en_print20", "page_id"),
}


def run_set(
    name: str, minutes: float, overrides: list[str], out_root: Path, label: str, reread: str | None = None
) -> dict:
    folder, key = SETS[name]
    split = held_out([str(DATA / folder)], key=key, seed=0)
    out = out_root / name / label
    cfg = load_config(
        TrainConfig,
        RECIPE,
        [f"output_dir={out / 'train'}", f"max_minutes={minutes}", "progress=false", *overrides],
    )
    before = out_root / name / "eval_before"  # the shipped model's test run, shared by every recipe
    if reread:  # a model trained by an earlier run, read with the LM reader fitted as training now does
        trained = out_root / name / reread / "train"
        model = trained / "best" if (trained / "best").is_dir() else trained / "final"
        summary = reread_with_lm(cfg, split, model, out, before)
        summary.update(set=name, folder=folder, label=label, minutes=minutes, overrides=overrides)
        return summary
    summary = finetune_and_score(cfg, split, out, before_dir=before if before.is_dir() else None)
    if not before.is_dir():
        (out / "eval_before").rename(before)
    summary.update(set=name, folder=folder, label=label, minutes=minutes, overrides=overrides)
    return summary


def table(results: dict) -> str:
    """The results as a Markdown table (docs/hard_documents.md and the README use it)."""
    rows = [
        "| set (split key) | train / val / test lines | shipped CER (95% CI) | fine-tuned CER (95% CI) "
        "| change, paired 95% CI | steps in budget |",
        "|---|---|---|---|---|---|",
    ]

    def pct(m: dict) -> str:
        lo, hi = m["cer_ci"]
        return f"{100 * m['cer']:.2f}% ({100 * lo:.2f}–{100 * hi:.2f})"

    for r in results["runs"]:
        sp, ch, tr = r["split"], r["cer_change"], r["train"]
        rows.append(
            f"| {r['set']} [{r['label']}] ({sp['key']}) | {sp['train']} / {sp['val']} / {sp['test']} "
            f"| {pct(r['before'])} | {pct(r['after'])} "
            f"| {100 * ch['delta']:+.2f} pt [{100 * ch['ci_low']:+.2f}, {100 * ch['ci_high']:+.2f}] "
            f"| {tr['steps']} in {r['minutes']:g} min ({tr['stopped']}) |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="*", default=list(SETS), help=f"any of {list(SETS)}")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--label", default="default")
    p.add_argument("--out", default=str(ROOT / "runs" / "hard_documents"))
    p.add_argument(
        "--reread",
        metavar="LABEL",
        help="no training: the model of run LABEL with the LM reader fitted "
        "on its training texts and chosen on validation (as lm.enabled does after training)",
    )
    p.add_argument("--table", action="store_true", help="print the stored results as Markdown and exit")
    args, overrides = p.parse_known_args(argv if argv is not None else [])
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return {}
    results: dict = {"runs": []}
    for name in args.sets:
        s = run_set(name, args.minutes, overrides, Path(args.out), args.label, args.reread)
        results = (
            json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
        )  # others may have written
        results["runs"] = [r for r in results["runs"] if (r["set"], r["label"]) != (s["set"], s["label"])] + [
            s
        ]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
        b, a, ch = s["before"], s["after"], s["cer_change"]
        print(
            f"{name} [{args.label}]: CER {b['cer']:.2%} -> {a['cer']:.2%} "
            f"(change {100 * ch['delta']:+.2f} pt, 95% CI [{100 * ch['ci_low']:+.2f}, {100 * ch['ci_high']:+.2f}]), "
            f"{s['train']['steps']} steps, {s['train']['wall_seconds']:.0f} s",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
