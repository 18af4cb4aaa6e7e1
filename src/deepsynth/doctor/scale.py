"""Ray check: ``deepsynth ocr --ray --gpus-per-worker 1`` (``ocr_on_ray``) with one engine actor on a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from deepsynth.doctor.fixtures import checkpoint, line_samples
from deepsynth.doctor.runner import CheckContext, Skip


def ray_gpu_actor(ctx: CheckContext) -> dict[str, Any]:
    """A local Ray runtime sees the GPU, an actor reserving ``num_gpus=1`` holds a tiny DeepSeek-OCR-2 loaded
    there, and every input file gets its record."""
    if importlib.util.find_spec("ray") is None:
        raise Skip("ray is not installed (pip install 'deepsynth[scale]')")
    import ray
    import torch

    from deepsynth.scale.ocr import ocr_on_ray
    from deepsynth.scale.runtime import RayOptions

    gpus = torch.cuda.device_count()
    files = []
    for i, sample in enumerate(line_samples(4)):
        files.append(Path(ctx.workdir) / f"line{i}.png")
        sample.image.save(files[-1])
    out = Path(ctx.workdir) / "ocr.jsonl"
    opts = RayOptions(workers=1, gpus_per_worker=1.0 if gpus else 0.0, batch_size=2, shard_size=2)
    try:
        stats = ocr_on_ray(
            f"deepseek_ocr2:{checkpoint('deepseek_ocr2')}", files, out, opts=opts, progress=False
        )
        resources = ray.cluster_resources()
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ok = sum(r.get("status") == "ok" for r in records)
    if ok != len(files):
        raise AssertionError(f"{ok} of {len(files)} files read; failures {dict(stats.failures)}")
    if ctx.require_cuda and resources.get("GPU", 0) < 1:
        raise AssertionError(f"Ray sees no GPU: {resources}")
    return {
        "records": ok,
        "ray_gpus": resources.get("GPU", 0),
        "seconds": stats.seconds,
        "ray": ray.__version__,
    }
