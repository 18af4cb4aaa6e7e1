"""Peak memory and step time of the `make demo` training recipe, wave 1 vs now.

Each variant trains the shipped PP-OCRv6-small recogniser for a fixed number of steps of configs/ppocr_demo.yaml
(batch 8 of real Fraktur lines) in a fresh process, which reports its peak RSS (``ru_maxrss``, model loading
included) and its median step time. Variants alternate round by round; the declared statistic is the median over
rounds of the per-round ratio (variant / wave 1) with its range.

- ``wave1``: BatchNorms as converted (the identity ones kept as BatchNorm2d in eval mode);
- ``bias_norms``: identity BatchNorms computed as bias adds (the default now, models/ppocr/frozen_norm.py);
- ``bias_norms+frozen_stem``: and the stem frozen (``model.freeze=[model.backbone.encoder.convolution]``).

    python -m bench.run_all train_memory     # writes bench/results/train_memory.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("BENCH_MEMORY_STEPS", "10"))
ROUNDS = int(os.environ.get("BENCH_MEMORY_ROUNDS", "2"))
STEM = "model.backbone.encoder.convolution"
VARIANTS = {
    "wave1": [],
    "bias_norms": [],
    "bias_norms+frozen_stem": [f"model.freeze=[{STEM}]"],
}

CHILD = r"""
import json, resource, statistics, sys
from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig
from deepsynth.training.trainer import Trainer
variant, out, steps, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
if variant == "wave1":
    from deepsynth.models.ppocr.adapter import PPOCRAdapter
    PPOCRAdapter.prepare_for_training = lambda self, cfg=None: None
cfg = load_config(TrainConfig, "configs/ppocr_demo.yaml", [
    f"output_dir={out}", "data.train=[examples/gt4histocr_dta19]", f"max_steps={steps}", "max_minutes=null",
    "eval.at_start=false", "eval.every_steps=0", "checkpoint.every_steps=0", "checkpoint.save_final=false",
    "checkpoint.save_best=false", "data.eval_limit=8", "progress=false", "trackers=[jsonl]", "num_threads=1", *overrides])
times = []
trainer = Trainer(cfg, callbacks=[lambda t: times.append(t.planner.step_times[-1])])
trainer.run()
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "step_s": statistics.median(times[1:]), "steps": len(times)}))
"""


def run_variant(name: str, tmp: Path, rnd: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-c", CHILD, name, str(tmp / f"{name}-{rnd}"), str(STEPS), *VARIANTS[name]]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> dict:
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(ROUNDS):
            for name in VARIANTS:
                rows[name].append(run_variant(name, Path(tmp), rnd))
                print(name, rows[name][-1], flush=True)
    base = rows["wave1"]
    result: dict = {"recipe": "configs/ppocr_demo.yaml (batch 8, Fraktur lines)", "steps": STEPS,
                    "rounds": ROUNDS, "statistic": "median over rounds (range)", "variants": {}}  # fmt: skip
    for name, runs in rows.items():
        mem = [r["peak_rss_mb"] / b["peak_rss_mb"] for r, b in zip(runs, base, strict=True)]
        speed = [b["step_s"] / r["step_s"] for r, b in zip(runs, base, strict=True)]
        result["variants"][name] = {
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs)),
            "peak_rss_mb_range": [
                round(min(r["peak_rss_mb"] for r in runs)),
                round(max(r["peak_rss_mb"] for r in runs)),
            ],
            "step_s": round(statistics.median(r["step_s"] for r in runs), 3),
            "steps_per_s": round(1 / statistics.median(r["step_s"] for r in runs), 3),
            "memory_ratio_vs_wave1": round(statistics.median(mem), 3),
            "speed_ratio_vs_wave1": round(statistics.median(speed), 3),
            "speed_ratio_range": [round(min(speed), 3), round(max(speed), 3)],
        }
    result["goal"] = "peak RSS <= 1.5 GB for the demo recipe"
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
