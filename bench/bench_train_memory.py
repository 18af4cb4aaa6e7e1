"""Peak memory and step time of the `make demo` training recipe, per memory setting.

Each variant trains the shipped PP-OCRv6-small recogniser for a few steps of configs/ppocr_demo.yaml (batch 8 of
real Fraktur lines; one validation pass of 16 lines at the recipe's eval batch of 16 first) in a fresh process,
which reports its peak RSS (``ru_maxrss``: model loading, validation and training included) and the wall and CPU
time of every step. All variants see the same batches (same seed). Variants alternate within each round; the
declared statistic for speed is the median over (round, step) pairs of the step's CPU-time ratio to ``before``
(CPU time, because the shared machine's other processes stretch wall time ~2-10x), with its distribution-free CI.

- ``before``: identity BatchNorms as bias adds (frozen_norm.py), nothing else (the state before this bench);
- ``ckpt_stages`` / ``ckpt_blocks``: activation checkpointing of the backbone per stage / per block
  (``model.options.gradient_checkpointing``, models/ppocr/checkpointing.py);
- ``mmap1``: glibc maps every block >= 1 MiB on its own (``malloc_mmap_mb=1``, training/allocator.py);
- ``ckpt_blocks+mmap1``: both;
- ``prune`` / ``ckpt_blocks+prune``: the head keeps only the classes of the scripts the text uses
  (``model.prune_charset``: 18,710 -> ~1,750 classes), without / with per-block checkpointing.

History (same recipe, 2 rounds, older bench without the validation pass): wave 1 3,577 MB; identity BatchNorms as
bias adds 3,182 MB; + stem frozen 2,831 MB.

    taskset -c 0 python -m bench.run_all train_memory     # writes bench/results/train_memory.json
    BENCH_MEMORY_RAW=/tmp/raw.jsonl ...                   # append this invocation's runs to earlier ones
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.stats import paired_ratio

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("BENCH_MEMORY_STEPS", "6"))
ROUNDS = int(os.environ.get("BENCH_MEMORY_ROUNDS", "1"))
RAW = os.environ.get("BENCH_MEMORY_RAW")
BASE = "before"
VARIANTS = {
    "before": ["model.options.gradient_checkpointing=off", "model.prune_charset=false"],
    "ckpt_stages": ["model.options.gradient_checkpointing=stages", "model.prune_charset=false"],
    "ckpt_blocks": ["model.options.gradient_checkpointing=blocks", "model.prune_charset=false"],
    "mmap1": ["model.options.gradient_checkpointing=off", "malloc_mmap_mb=1", "model.prune_charset=false"],
    "ckpt_blocks+mmap1": [
        "model.options.gradient_checkpointing=blocks",
        "malloc_mmap_mb=1",
        "model.prune_charset=false",
    ],
    "prune": ["model.options.gradient_checkpointing=off", "model.prune_charset=true"],
    "ckpt_blocks+prune": ["model.options.gradient_checkpointing=blocks", "model.prune_charset=true"],
    "ckpt_blocks+mmap1+prune": [
        "model.options.gradient_checkpointing=blocks",
        "malloc_mmap_mb=1",
        "model.prune_charset=true",
    ],
}
CHOSEN = [v for v in os.environ.get("BENCH_MEMORY_VARIANTS", ",".join(VARIANTS)).split(",") if v]

CHILD = r"""
import json, resource, sys, time
from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig
from deepsynth.training.trainer import Trainer
out, steps, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cfg = load_config(TrainConfig, "configs/ppocr_demo.yaml", [
    f"output_dir={out}", "data.train=[examples/gt4histocr_dta19]", f"max_steps={steps}", "max_minutes=null",
    "eval.at_start=true", "eval.every_steps=0", "checkpoint.every_steps=0", "checkpoint.save_final=false",
    "checkpoint.save_best=false", "data.eval_limit=16", "progress=false", "trackers=[jsonl]", "num_threads=1",
    *overrides])
marks = []
trainer = Trainer(cfg, callbacks=[lambda t: marks.append((time.perf_counter(), time.process_time()))])
trainer.setup()
setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
marks.append((time.perf_counter(), time.process_time()))
trainer.train()
trainer.cleanup()
# marks[0] is before the validation pass, marks[1] after step 1: step k (k >= 2) is marks[k] - marks[k-1]
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "setup_peak_rss_mb": setup_peak,
                  "step_wall_s": [b[0] - a[0] for a, b in zip(marks[1:], marks[2:])],
                  "step_cpu_s": [b[1] - a[1] for a, b in zip(marks[1:], marks[2:])]}))
"""


def run_variant(name: str, tmp: Path, rnd: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-c", CHILD, str(tmp / f"{name}-{rnd}"), str(STEPS), *VARIANTS[name]]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return {"variant": name, **json.loads(out.strip().splitlines()[-1])}


def summarize(runs: list[dict]) -> dict:
    rounds = sorted({r["round"] for r in runs})
    by = {(r["round"], r["variant"]): r for r in runs}
    names = [n for n in VARIANTS if any(r["variant"] == n for r in runs)]
    result: dict = {
        "recipe": "configs/ppocr_demo.yaml (batch 8, Fraktur lines, eval batch 16), num_threads=1, one core",
        "steps_per_run": STEPS,
        "rounds": len(rounds),
        "memory_statistic": "median peak RSS over rounds (range)",
        "speed_statistic": f"median of per-step paired CPU-time ratios vs {BASE!r} (steps 2.., same batches)",
        "variants": {},
    }
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        peaks = [r["peak_rss_mb"] for r in mine]
        cpu = [t for r in mine for t in r["step_cpu_s"]]
        wall = [t for r in mine for t in r["step_wall_s"]]
        row = {
            "peak_rss_mb": round(statistics.median(peaks)),
            "peak_rss_mb_range": [round(min(peaks)), round(max(peaks))],
            "setup_peak_rss_mb": round(statistics.median(r["setup_peak_rss_mb"] for r in mine)),
            "step_cpu_s": round(statistics.median(cpu), 3),
            "steps_per_cpu_s": round(1 / statistics.median(cpu), 3),
            "step_wall_s": round(statistics.median(wall), 3),
        }
        ratios = [
            c / b
            for rnd in rounds
            if (rnd, name) in by and (rnd, BASE) in by
            for c, b in zip(by[rnd, name]["step_cpu_s"], by[rnd, BASE]["step_cpu_s"], strict=True)
        ]
        if ratios and name != BASE:
            row["cpu_time_ratio_vs_before"] = paired_ratio(ratios)
        result["variants"][name] = row
    result["goal"] = "peak RSS <= 1.5 GB for the demo recipe"
    return result


def main() -> dict:
    runs: list[dict] = []
    if RAW and Path(RAW).is_file():
        runs = [json.loads(line) for line in Path(RAW).read_text().splitlines() if line.strip()]
    first = max((r["round"] for r in runs), default=-1) + 1
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(first, first + ROUNDS):
            order = CHOSEN[rnd % len(CHOSEN) :] + CHOSEN[: rnd % len(CHOSEN)]  # rotate who goes first
            for name in order:
                row = {"round": rnd, **run_variant(name, Path(tmp), rnd)}
                runs.append(row)
                print(name, round(row["peak_rss_mb"]), [round(t, 2) for t in row["step_cpu_s"]], flush=True)
                if RAW:
                    with open(RAW, "a") as f:
                        f.write(json.dumps(row) + "\n")
    return summarize(runs)


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
