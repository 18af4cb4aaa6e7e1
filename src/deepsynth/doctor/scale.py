"""Ray check: a Ray Data ``map_batches`` actor pool whose actor asks for ``num_gpus=1`` and reads on that GPU."""

from __future__ import annotations

import importlib.util
import io
from typing import Any

from deepsynth.doctor.fixtures import checkpoint, line_samples
from deepsynth.doctor.runner import CheckContext, Skip


class _Reader:
    """One engine per actor, loaded where Ray placed the actor (its GPU)."""

    def __init__(self, spec: str) -> None:
        from deepsynth.models.registry import load_engine

        self.engine = load_engine(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import ray
        from PIL import Image

        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch["png"]]
        texts = [p.text for p in self.engine.recognize(images)]
        where = f"{self.engine.device} gpus={ray.get_gpu_ids()}"
        return {"id": batch["id"], "text": texts, "where": [where] * len(texts)}


def ray_gpu_actor(ctx: CheckContext) -> dict[str, Any]:
    if importlib.util.find_spec("ray") is None:
        raise Skip("ray is not installed (pip install 'deepsynth[scale]')")
    import ray
    import torch

    gpus = torch.cuda.device_count()
    rows = []
    for i, sample in enumerate(line_samples(4)):
        buf = io.BytesIO()
        sample.image.save(buf, "PNG")
        rows.append({"id": i, "png": buf.getvalue()})
    spec = f"deepseek_ocr2:{checkpoint('deepseek_ocr2')}"
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_items(rows).map_batches(
            _Reader, fn_constructor_args=(spec,), batch_size=2, concurrency=1, num_gpus=1 if gpus else 0
        )
        out = ds.take_all()
    finally:
        ray.shutdown()
    where = sorted({r["where"] for r in out})
    if len(out) != len(rows):
        raise AssertionError(f"{len(out)} of {len(rows)} rows came back")
    if ctx.require_cuda and not all(w.startswith("cuda") and "gpus=[]" not in w for w in where):
        raise AssertionError(f"the actor did not read on its GPU: {where}")
    return {"rows": len(out), "actors": where, "ray": ray.__version__}
