"""The GPU checks of ``deepsynth doctor --gpu`` / ``make gpu-check``, in the order they run.

Each runs in its own process (``runner.py``) and calls the library functions users call — the trainer with a
recipe, ``export_merged``, ``deepsynth serve`` — on tiny models of the real architectures saved as local
checkpoints (nothing is downloaded), or on ``--model PATH``. What each proves: ``docs/models.md``.
"""

from __future__ import annotations

from typing import Any

from deepsynth.doctor.runner import Check, CheckContext, Skip


def cuda(ctx: CheckContext) -> dict[str, Any]:
    """CUDA is visible to torch, and a bf16 matmul runs on it (the build has kernels for this GPU)."""
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}"
        raise Skip(f"torch.cuda.is_available() is False; {build}")
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    value = float((a @ a).float().abs().sum())  # "no kernel image" for an unsupported GPU fails here
    if value != value:
        raise RuntimeError("bf16 matmul on CUDA gave NaN")
    return {
        "summary": f"{props.name}, capability {props.major}.{props.minor}, {props.total_memory / 1024**3:.0f} GiB",
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 1024**3, 1),
        "devices": torch.cuda.device_count(),
        "bf16": torch.cuda.is_bf16_supported(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


_D = "deepsynth.doctor"
CHECKS: tuple[Check, ...] = (
    Check("cuda", f"{_D}.gpu_checks:cuda", 120),
    Check("lora_deepseek_ocr2", f"{_D}.finetune:lora_deepseek_ocr2", 300),
    Check("lora_qwen2_5_vl", f"{_D}.finetune:lora_qwen2_5_vl", 300),
    Check("qlora_deepseek_ocr2", f"{_D}.finetune:qlora_deepseek_ocr2", 300),
    Check("unsloth", f"{_D}.backends:unsloth", 600),
    Check("flash_attention", f"{_D}.backends:flash_attention", 300),
    Check("merge_parity", f"{_D}.finetune:merge_parity", 300),
    Check("ppocr_train_serve", f"{_D}.serving:ppocr", 300),
    Check("serve_vlm", f"{_D}.serving:serve_vlm", 300),
    Check("ray_gpu_actor", f"{_D}.scale:ray_gpu_actor", 300),
)
# with --model PATH: the fine-tune checks again on that checkpoint
MODEL_CHECKS: tuple[Check, ...] = (
    Check("model_lora", f"{_D}.finetune:model_lora", 900),
    Check("model_qlora", f"{_D}.finetune:model_qlora", 900),
    Check("model_unsloth", f"{_D}.backends:model_unsloth", 900),
)


def select(only: list[str] | None = None, model: str | None = None) -> list[Check]:
    """The checks to run: all (``cuda`` always first), or ``only`` these names; ``model`` adds the real-model ones."""
    checks = list(CHECKS) + (list(MODEL_CHECKS) if model else [])
    names = [c.name for c in checks]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(names)}")
        checks = [c for c in checks if c.name == "cuda" or c.name in only]
    return checks
