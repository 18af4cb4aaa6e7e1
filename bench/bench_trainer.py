"""Trainer overhead: DeepSynth's training step vs a bare PyTorch loop on the same model and batches.

Both loops run the shipped PP-OCRv6-small recogniser on the same real Fraktur lines (examples/), batch 8,
collate + forward + CTC loss + backward + clip + AdamW + LR schedule per step, on two copies of the model.
They alternate step by step (a trainer callback runs the bare step right after each trainer step), so load
from other processes on a shared machine hits both alike. The declared statistic is the median of the
per-step paired ratios (trainer / bare) with its distribution-free CI (bench/stats.py); the goal (<= 1.05) is
judged only when the CI is on one side of it.
Also: data-loader throughput (collate only) vs what training consumes.

    python -m bench.run_all trainer        # writes bench/results/trainer.json
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.stats import paired_ratio

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "gt4histocr_dta19"
STEPS = int(os.environ.get("BENCH_TRAINER_STEPS", "12"))
BATCH = 8


def _samples(n: int):
    from deepsynth.data import open_sources

    return list(open_sources([str(DATA)]))[:n]


class BareLoop:
    """The reference: the plain PyTorch loop a user would write, advanced one step at a time."""

    def __init__(self, adapter, samples, steps: int):
        import torch

        from deepsynth.training.config import OptimSettings
        from deepsynth.training.schedule import build_optimizer, build_scheduler

        self.torch = torch
        self.adapter, self.samples, self.i = adapter, samples, 0
        adapter.train_mode()
        self.params = [p for p in adapter.model.parameters() if p.requires_grad]
        self.opt = build_optimizer(adapter.model, OptimSettings(lr=1e-5))
        self.sched = build_scheduler(self.opt, OptimSettings(lr=1e-5), steps)

    def step(self) -> float:
        t = time.perf_counter()
        chunk = self.samples[self.i * BATCH : (self.i + 1) * BATCH]
        self.i += 1
        batch = self.adapter.collate(chunk)
        for s in chunk:
            s.release()
        loss = self.adapter.loss(batch)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        float(loss.item())
        return time.perf_counter() - t


def paired_steps(trainer_adapter, bare_adapter, samples, steps: int, out: Path) -> list[tuple[float, float]]:
    """Run the trainer; after each of its steps run the same step of the bare loop: adjacent, paired timings."""
    from deepsynth.config import load_config
    from deepsynth.training.config import TrainConfig
    from deepsynth.training.trainer import Trainer

    cfg = load_config(
        TrainConfig,
        None,
        [f"output_dir={out}", f"batch_size={BATCH}", f"max_steps={steps}", "optim.lr=1e-5", "data.shuffle=false",
         "eval.every_steps=0", "eval.at_start=false", "checkpoint.every_steps=0", "checkpoint.save_final=false",
         "trackers=[jsonl]", "progress=false", "model.extend_charset=false",
         "deterministic=false"],  # same torch settings as the bare loop: this measures the loop itself
    )  # fmt: skip
    bare = BareLoop(bare_adapter, samples, steps)
    pairs: list[tuple[float, float]] = []
    clock = {"t": 0.0}

    def after_step(_trainer) -> None:
        trainer_seconds = time.perf_counter() - clock["t"]
        pairs.append((trainer_seconds, bare.step()))
        clock["t"] = time.perf_counter()  # the bare step is not counted in the trainer's next interval

    trainer = Trainer(
        cfg, adapter=trainer_adapter, train_samples=samples, eval_samples=[], callbacks=[after_step]
    )
    trainer.setup()
    clock["t"] = time.perf_counter()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    return pairs


def _loader_throughput(adapter, samples) -> float:
    from deepsynth.training.data import BatchPlan, epoch_loader

    plan = BatchPlan(len(samples), BATCH, shuffle=False)
    t = time.perf_counter()
    n = sum(k - len(skipped) for _, skipped, k in epoch_loader(samples, plan, 0, 0, adapter.collate))
    return n / (time.perf_counter() - t)


def main() -> dict:
    import copy

    from deepsynth.models.ppocr.adapter import PPOCRAdapter

    samples = _samples(BATCH * STEPS)
    base = PPOCRAdapter.from_shipped()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = paired_steps(copy.deepcopy(base), copy.deepcopy(base), samples, STEPS, Path(tmp) / "run")[1:]
    loader = _loader_throughput(base, samples)
    t_med = statistics.median(t for t, _ in pairs)
    b_med = statistics.median(b for _, b in pairs)
    return {
        "model": "PP-OCRv6-small (shipped), full fine-tune",
        "batch_size": BATCH,
        "paired_steps": len(pairs),
        "trainer_step_median_s": round(t_med, 4),
        "bare_step_median_s": round(b_med, 4),
        "overhead_trainer_over_bare": paired_ratio([t / b for t, b in pairs], goal=1.05),
        "pairs_s": [[round(t, 3), round(b, 3)] for t, b in pairs],
        "loader_samples_per_s": round(loader, 1),
        "training_consumes_samples_per_s": round(BATCH / t_med, 1),
        "loader_headroom": round(loader / (BATCH / t_med), 1),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
