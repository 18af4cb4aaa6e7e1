"""Many models behind one server: LoRA adapters on one base (tiny DeepSeek-OCR-2, random weights).

1. Memory: parameter bytes of N adapters on one base (:class:`LoraSet`) vs N separate servers each holding the
   base + its adapter (goal: the base's weights once, ratio <= 1/N + the adapters' share). Exact byte counts
   (RSS on this shared machine is noise).
2. Throughput: the same load (REQUESTS concurrent one-image requests through the server's path: ModelPool →
   each adapter's view of the base's OCRService → its one batcher → the base and its adapters in their model
   process, as `deepsynth serve --lora` runs them; a batch mixes adapters) spread over 4 adapters vs all on 1
   adapter; declared statistic: median of per-round ratios spread/one over interleaved rounds (goal >= 0.8,
   bench/stats.py).
   Engine alone (no server): one batch of 8 rows spread over 4 adapters vs 8 rows of one adapter vs the base
   alone, timed on the LoraSet directly, same statistic (what the mixed generate() itself costs).
3. Swap latency: with ``max_loras=1``, a request for the other adapter (load + evict + read) vs a request for
   the loaded one; median over rounds of the extra milliseconds.

    nice -n 10 python bench/bench_multi_model.py [--rounds 5] [--requests 16]   # -> bench/results/multi_model.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_ADAPTERS = 4
NEW_TOKENS = 8


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _save_adapters(root: Path, n: int) -> dict[str, Path]:
    from deepsynth.testing.tiny_models import build_tiny

    out = {}
    for i in range(n):
        ad = build_tiny("deepseek_ocr2")
        ad.apply_lora({"r": 8})
        ad.save(root / f"a{i}")
        out[f"a{i}"] = root / f"a{i}"
    return out


def memory(paths: dict[str, Path]) -> dict:
    from deepsynth.models.vlm import adapter_class
    from deepsynth.models.vlm.multi_lora import LoraSet
    from deepsynth.testing.tiny_models import build_tiny

    shared = LoraSet(build_tiny("deepseek_ocr2"), paths, max_loras=len(paths))
    for name in paths:
        shared.activate(name)
    one = adapter_class("deepseek_ocr2").load(next(iter(paths.values())))
    shared_bytes, separate_bytes = _param_bytes(shared.base.model), len(paths) * _param_bytes(one.model)
    base_bytes = _param_bytes(build_tiny("deepseek_ocr2").model)
    return {
        "adapters": len(paths),
        "one_base_bytes": shared_bytes,
        "separate_servers_bytes": separate_bytes,
        "ratio": round(shared_bytes / separate_bytes, 4),
        "base_bytes": base_bytes,
        "base_copies_in_shared": round(shared_bytes / base_bytes, 4),
        "goal": f"<= 1/N + adapters' share ({1 / len(paths):.2f} + small)",
    }


async def _load(pool, names: list[str], requests: int, image) -> float:
    """Images per second for ``requests`` concurrent one-image requests, round-robin over ``names``."""
    from deepsynth.models.generation import GenerationConfig

    gen = GenerationConfig(max_new_tokens=NEW_TOKENS)

    async def one(i: int):
        with pool.lease(names[i % len(names)]) as service:
            return await service.recognize_async([image], gen)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return requests / (time.perf_counter() - t0)


async def throughput(paths: dict[str, Path], rounds: int, requests: int) -> dict:
    import psutil
    from tests.vlm_helpers import line_image

    from deepsynth.inference.model_process import ProcessEngine
    from deepsynth.inference.pool import ModelPool, ServedModel
    from deepsynth.inference.service import OCRService
    from deepsynth.observability import Observability

    engine = ProcessEngine("deepseek_ocr2:tiny", threads=1, lora={n: str(p) for n, p in paths.items()})
    base = OCRService(
        engine, model_id="base", owns_engine=True, max_batch_size=8, max_wait_ms=20,
        obs=Observability("base", metrics=False),
    )  # fmt: skip
    views = {n: base.adapter_view(n, obs=Observability(n, metrics=False)) for n in paths}
    pool = ModelPool(
        {"base": ServedModel("base", base)}
        | {n: ServedModel(n, v, str(paths[n]), "base") for n, v in views.items()}
    )
    await pool.start(warmup=True)
    image = line_image("the lazy fox 42")
    names = list(paths)
    await _load(pool, names, len(names), image)  # every adapter loaded once before timing
    ratios, spread_rates, one_rates = [], [], []
    sizes: dict[str, list[int]] = {"spread": [], "one": []}
    try:
        for r in range(rounds):
            order = [("spread", names), ("one", names[:1])]
            if r % 2:
                order.reverse()
            rates = {}
            for label, chosen in order:
                seen = len(base.batcher.stats.batch_sizes)
                rates[label] = await _load(pool, chosen, requests, image)
                sizes[label] += base.batcher.stats.batch_sizes[seen:]
            ratios.append(rates["spread"] / rates["one"])
            spread_rates.append(rates["spread"])
            one_rates.append(rates["one"])
        model_cpu = psutil.Process(engine.pid).cpu_times()
    finally:
        await pool.aclose()
    swaps = await _swap_latency(paths, rounds, image)
    engine_only = engine_ratios(paths, rounds, image)
    from bench.stats import paired_ratio

    return {
        "requests_per_round": requests,
        "new_tokens": NEW_TOKENS,
        "path": "ModelPool -> adapter views -> one batcher (max 8, 20 ms) -> ProcessEngine (1 thread) -> LoraSet",
        "images_per_s_spread_over_4": [round(x, 2) for x in spread_rates],
        "images_per_s_one_adapter": [round(x, 2) for x in one_rates],
        "cpu_seconds_model_process": round(model_cpu.user + model_cpu.system, 1),
        "mean_batch_size": {k: round(statistics.mean(v), 2) for k, v in sizes.items() if v},
        "spread_over_one": paired_ratio(ratios, goal=0.8, higher_is_better=True),
        "engine_only": engine_only,
        "swap": swaps,
    }


def engine_ratios(paths: dict[str, Path], rounds: int, image) -> dict:
    """Throughput ratios of one generate() of 8 rows: spread over the adapters / one adapter / the base."""
    from bench.stats import paired_ratio
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.models.vlm.multi_lora import LoraSet
    from deepsynth.testing.tiny_models import build_tiny

    gen = GenerationConfig(max_new_tokens=NEW_TOKENS)
    lora = LoraSet(build_tiny("deepseek_ocr2"), paths, max_loras=len(paths))
    names = list(paths)
    runs = {"spread": [names[i % len(names)] for i in range(8)], "one": [names[0]] * 8, "base": None}
    images = [image] * 8
    for how in runs.values():
        lora.recognize(images, gen, how)
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for label in order:
            t0 = time.perf_counter()
            lora.recognize(images, gen, runs[label])
            seconds[label].append(time.perf_counter() - t0)
    return {
        "seconds_per_batch_of_8": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "spread_over_one": paired_ratio(
            [o / s for s, o in zip(seconds["spread"], seconds["one"], strict=True)]
        ),
        "one_adapter_over_base": paired_ratio(
            [b / o for o, b in zip(seconds["one"], seconds["base"], strict=True)]
        ),
    }


async def _swap_latency(paths: dict[str, Path], rounds: int, image) -> dict:
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.models.vlm.multi_lora import LoraSet
    from deepsynth.testing.tiny_models import build_tiny

    gen = GenerationConfig(max_new_tokens=NEW_TOKENS)
    lora = LoraSet(build_tiny("deepseek_ocr2"), paths, max_loras=1)
    a, b = list(paths)[:2]
    lora.engine(a).recognize([image], gen)
    extra = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        lora.engine(a).recognize([image], gen)  # loaded: no swap
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        lora.engine(b).recognize([image], gen)  # load b, evict a
        swapped = time.perf_counter() - t0
        a, b = b, a
        extra.append((swapped - warm) * 1000)
    return {"extra_ms_median": round(statistics.median(extra), 2), "extra_ms": [round(x, 2) for x in extra]}


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements (``bench.run_all`` calls this with no arguments: the defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multi_model.json")
    args = parser.parse_args(argv or [])
    import torch

    torch.set_num_threads(1)  # as the model process runs (--threads 1)
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        paths = _save_adapters(Path(tmp), N_ADAPTERS)
        result = {
            "memory": memory(paths),
            "throughput": asyncio.run(throughput(paths, args.rounds, args.requests)),
        }
    result["cpu_seconds_this_process"] = round(
        time.process_time() - cpu0, 1
    )  # the model process's not included
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
