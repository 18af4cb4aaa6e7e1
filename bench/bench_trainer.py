"""Trainer overhead: DeepSynth's training step vs a bare PyTorch loop on the same model and batches.

Both loops run the shipped PP-OCRv6-small recogniser on the same real Fraktur lines (examples/), batch 8,
collate + forward + CTC loss + backward + clip + AdamW + LR schedule per step. Rounds alternate
(trainer, bare, trainer, bare, ...) so load from other processes hits both alike; the overhead is the ratio
of median step times. Also: data-loader throughput (collate only) vs what training consumes.

    python -m bench.run_all trainer        # writes bench/results/trainer.json
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "gt4histocr_dta19"
STEPS = int(os.environ.get("BENCH_TRAINER_STEPS", "5"))
ROUNDS = int(os.environ.get("BENCH_TRAINER_ROUNDS", "4"))
BATCH = 8


def _samples(n: int):
    from deepsynth.data import open_sources

    return list(open_sources([str(DATA)]))[:n]


def _bare_loop(adapter, samples, steps: int) -> list[float]:
    """The reference: the plain PyTorch loop a user would write."""
    import torch

    from deepsynth.training.config import OptimSettings
    from deepsynth.training.schedule import build_optimizer, build_scheduler

    adapter.train_mode()
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    opt = build_optimizer(adapter.model, OptimSettings(lr=1e-5))
    sched = build_scheduler(opt, OptimSettings(lr=1e-5), steps)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        chunk = samples[i * BATCH : (i + 1) * BATCH]
        batch = adapter.collate(chunk)
        for s in chunk:
            s.release()
        loss = adapter.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        float(loss.item())
        times.append(time.perf_counter() - t)
    return times


def _trainer_loop(adapter, samples, steps: int, out: Path) -> list[float]:
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
    marks: list[float] = []
    trainer = Trainer(cfg, adapter=adapter, train_samples=samples, eval_samples=[],
                      callbacks=[lambda t: marks.append(time.perf_counter())])  # fmt: skip
    trainer.setup()
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    edges = [start, *marks]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


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
    trainer_steps: list[float] = []
    bare_steps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            trainer_steps += _trainer_loop(copy.deepcopy(base), samples, STEPS, Path(tmp) / f"r{r}")[1:]
            bare_steps += _bare_loop(copy.deepcopy(base), samples, STEPS)[1:]  # first step warms up
    loader = _loader_throughput(base, samples)
    t_med, b_med = statistics.median(trainer_steps), statistics.median(bare_steps)
    consumption = BATCH / t_med
    return {
        "model": "PP-OCRv6-small (shipped), full fine-tune",
        "batch_size": BATCH,
        "steps_per_round": STEPS,
        "rounds": ROUNDS,
        "trainer_step_median_s": round(t_med, 4),
        "bare_step_median_s": round(b_med, 4),
        "overhead_ratio": round(t_med / b_med, 4),
        "overhead_goal": "<= 1.05",
        "loader_samples_per_s": round(loader, 1),
        "training_consumes_samples_per_s": round(consumption, 1),
        "loader_headroom": round(loader / consumption, 1),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
