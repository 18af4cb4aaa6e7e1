"""Fine-tune checks: the trainer with a recipe, on a tiny checkpoint of a real architecture or ``--model``.

Each runs ``Trainer`` exactly as ``deepsynth train RECIPE model.path=CHECKPOINT max_steps=4 ...`` does, then
checks what ran on the GPU: the accelerator's device and mixed precision, where the weights live, the
optimizer chosen, finite losses on every step.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from deepsynth.doctor.fixtures import StepTimer, checkpoint, line_samples, model_family, recipe
from deepsynth.doctor.runner import CheckContext, Skip

STEPS = 4
SHORT_RUN = [
    f"max_steps={STEPS}", "epochs=null", "grad_accum=1", "optim.warmup_steps=0",
    "eval.every_steps=0", "eval.at_start=false", "eval.batch_size=2", "checkpoint.every_steps=0",
    "generation.max_new_tokens=8", "trackers=[jsonl]", "progress=false", "precision=auto",
]  # fmt: skip


def overrides(ctx: CheckContext, family: str, path: str | None, extra: list[str]) -> list[str]:
    """``key=value`` overrides of the recipe: the checkpoint, a fresh output dir, a 4-step run."""
    out = [
        f"model.family={family}",
        f"model.path={path or checkpoint(family)}",
        "lora.enabled=true",
        f"output_dir={tempfile.mkdtemp(prefix=f'{family}-', dir=ctx.workdir)}",
        f"batch_size={1 if path else 2}",
        *SHORT_RUN,
    ]
    if path is None:  # a tiny processor's own image size (the recipes' named modes are the released models')
        out.append("model.options.image_mode=null")
    return out + extra


def describe(trainer: Any, result: Any, timer: StepTimer) -> dict[str, Any]:
    """What ran: device, precision, where the weights are, optimizer, backend, attention, losses, step time."""
    model = trainer.adapter.model
    weight = next(p for p in model.parameters() if p.is_floating_point())
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
    last_eval = result.evals[-1] if result.evals else {}
    return {
        "device": str(trainer.acc.device),
        "mixed_precision": trainer.acc.mixed_precision,
        "weights": f"{weight.dtype} on {weight.device}",
        "optimizer": type(optimizer).__name__,
        "backend": getattr(trainer.adapter, "backend", "peft"),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "losses": [round(v, 4) for v in result.losses.values()],
        "eval": {k: v for k, v in last_eval.items() if k in ("cer", "wer")},
        "final_dir": result.final_dir,
        "step_seconds": timer.median(),
    }


def train_check(
    ctx: CheckContext, family: str, recipe_name: str, path: str | None = None, extra: list[str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train ``STEPS`` LoRA steps of ``family`` (a tiny checkpoint unless ``path``); returns (trainer, details)."""
    import torch

    from deepsynth.config import load_config
    from deepsynth.training.config import TrainConfig
    from deepsynth.training.trainer import Trainer

    cfg = load_config(TrainConfig, recipe(recipe_name), overrides(ctx, family, path, extra or []))
    samples, timer = line_samples(4 * cfg.batch_size), StepTimer()
    trainer = Trainer(cfg, train_samples=samples, eval_samples=samples[:2], callbacks=[timer])
    result = trainer.run()
    details = {"family": family, "checkpoint": path or "tiny", **describe(trainer, result, timer)}
    details["summary"] = ", ".join(
        str(details[k]) for k in ("weights", "mixed_precision", "optimizer", "backend", "attn_implementation")
    )
    if result.steps != STEPS or result.skipped_batches:
        raise RuntimeError(f"{result.steps}/{STEPS} steps, {result.skipped_batches} skipped batch(es)")
    if not all(math.isfinite(v) and v > 0 for v in result.losses.values()):
        raise RuntimeError(f"non-finite or zero losses: {details['losses']}")
    if ctx.require_cuda:
        _expect(details["device"].startswith("cuda"), f"trained on {details['device']}, not CUDA")
        _expect(" on cuda" in details["weights"], f"weights {details['weights']}, not on CUDA")
        bf16 = torch.cuda.is_bf16_supported()
        _expect(not bf16 or trainer.acc.mixed_precision == "bf16", "bf16 supported but not used")
    return trainer, details


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def lora(ctx: CheckContext, family: str) -> dict[str, Any]:
    """LoRA (peft, language_model preset) on a tiny checkpoint loaded like a real one: bf16 weights on CUDA,
    bf16 autocast, evaluation by generation at the end."""
    _, details = train_check(ctx, family, f"{family}_lora.yaml", extra=["model.options.backend=peft"])
    return details


def lora_deepseek_ocr2(ctx: CheckContext) -> dict[str, Any]:
    return lora(ctx, "deepseek_ocr2")


def lora_qwen2_5_vl(ctx: CheckContext) -> dict[str, Any]:
    return lora(ctx, "qwen2_5_vl")


def qlora(ctx: CheckContext, family: str = "deepseek_ocr2", path: str | None = None) -> dict[str, Any]:
    """QLoRA: NF4 4-bit weights (bitsandbytes CUDA kernels) and, chosen by ``optim.name=auto``, paged 8-bit AdamW."""
    name = "deepseek_ocr2_qlora.yaml" if family == "deepseek_ocr2" else f"{family}_lora.yaml"
    extra = ["model.options.backend=peft", "model.options.quantization=4bit"]
    trainer, details = train_check(ctx, family, name, path, extra)
    from deepsynth.models.vlm.loading import is_quantized

    details["quantized"] = is_quantized(trainer.adapter.model)
    details["linear_4bit_layers"] = sum(
        type(m).__name__ == "Linear4bit" for m in trainer.adapter.model.modules()
    )
    _expect(details["quantized"] and details["linear_4bit_layers"] > 0, "the model is not quantised to 4 bit")
    if ctx.require_cuda:
        _expect(
            details["optimizer"] == "PagedAdamW8bit", f"optimizer {details['optimizer']}, not PagedAdamW8bit"
        )
    return details


def qlora_deepseek_ocr2(ctx: CheckContext) -> dict[str, Any]:
    return qlora(ctx)


def model_lora(ctx: CheckContext) -> dict[str, Any]:
    """``--model PATH``: the LoRA fine-tune on the real checkpoint (batch 1, bf16)."""
    if not ctx.model:
        raise Skip("no --model given")
    family, path = model_family(ctx.model)
    _, details = train_check(ctx, family, f"{family}_lora.yaml", path, ["model.options.backend=peft"])
    return details


def model_qlora(ctx: CheckContext) -> dict[str, Any]:
    """``--model PATH``: the QLoRA fine-tune on the real checkpoint."""
    if not ctx.model:
        raise Skip("no --model given")
    return qlora(ctx, *model_family(ctx.model))


def merge_parity(ctx: CheckContext) -> dict[str, Any]:
    """LoRA run → ``export_merged`` on the GPU: merged vs unmerged and reloaded vs trained logits within 1e-3
    (fp32 weights on CUDA; the bf16 differences are recorded, not judged: bf16 rounding of merged weights)."""
    import gc

    import torch

    from deepsynth.models.vlm.export import export_merged

    trainer, details = train_check(
        ctx, "deepseek_ocr2", "deepseek_ocr2_lora.yaml", extra=["model.options.backend=peft"]
    )
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    final, out = details["final_dir"], Path(ctx.workdir)
    fp32 = export_merged(final, out / "merged_fp32", dtype="float32")
    bf16 = export_merged(final, out / "merged_bf16", dtype="bfloat16", tolerance=math.inf)
    keys = ("max_abs_diff_merged_vs_unmerged", "max_abs_diff_exported_vs_trained", "device")
    return {
        **{k: details[k] for k in ("family", "device", "losses", "step_seconds")},
        "fp32": {k: fp32.get(k) for k in keys},
        "bf16": {k: bf16.get(k) for k in keys},
    }
