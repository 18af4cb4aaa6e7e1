"""PP-OCRv6 recogniser: conversion time, training step time at batch 8, inference PyTorch vs exported ONNX.

Real Fraktur lines from examples/gt4histocr_dta19 (falls back to ../shared/data). Run once:
``python -m bench.run_all ppocr``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [
    ROOT / "examples" / "gt4histocr_dta19",
    ROOT.parent / "shared" / "data" / "gt4histocr_dta19_lines",
]


def _lines(n: int):
    from PIL import Image

    from deepsynth.data.sample import Sample

    root = next(p for p in CANDIDATES if (p / "manifest.jsonl").is_file())
    rows = [json.loads(line) for line in (root / "manifest.jsonl").open(encoding="utf-8")][:n]
    return [Sample.from_image(r["id"], Image.open(root / r["image"]).convert("RGB"), r["text"]) for r in rows]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> dict:
    import torch

    from deepsynth.models.ppocr.adapter import PPOCRAdapter
    from deepsynth.models.ppocr.convert import convert_shipped
    from deepsynth.models.ppocr.onnx_engine import PPOCROnnxEngine

    torch.set_num_threads(2)
    load_before = os.getloadavg()[0]
    convert_shipped()  # warm the imports
    _, _, convert_s = convert_shipped()
    adapter = PPOCRAdapter.from_shipped()
    samples = _lines(24)
    adapter.extend_charset([s.text for s in samples])
    batch = adapter.collate(samples[:8])
    short = adapter.collate(
        [type(s).from_image(s.id, s.image.crop((0, 0, 200, s.image.height)), "x") for s in samples[:8]]
    )
    opt = torch.optim.AdamW([p for p in adapter.model.parameters() if p.requires_grad], lr=1e-6)

    def step(b):
        loss = adapter.loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()

    adapter.train_mode()
    step(batch)  # warm-up
    step_real = _median_time(lambda: step(batch), 3)
    step_320 = _median_time(lambda: step(short), 3)
    adapter.eval_mode()

    images = [s.image for s in samples]
    with tempfile.TemporaryDirectory() as tmp:
        engine = PPOCROnnxEngine(adapter.export_onnx(Path(tmp) / "m.onnx"), threads=2)
        adapter.recognize(images[:4])
        engine.recognize(images[:4])
        torch_s = _median_time(lambda: adapter.recognize(images), 2) / len(images)
        onnx_s = _median_time(lambda: engine.recognize(images), 2) / len(images)
    return {
        "conversion_seconds": round(convert_s, 3),
        "train_step_batch8_real_width": {
            "seconds": round(step_real, 3),
            "shape": list(batch["pixel_values"].shape),
        },
        "train_step_batch8_48x320": {
            "seconds": round(step_320, 3),
            "shape": list(short["pixel_values"].shape),
        },
        "inference_ms_per_line": {
            "pytorch": round(1000 * torch_s, 1),
            "onnxruntime": round(1000 * onnx_s, 1),
        },
        "onnx_speedup": round(torch_s / onnx_s, 2),
        "threads": 2,
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # shared cores
    }
