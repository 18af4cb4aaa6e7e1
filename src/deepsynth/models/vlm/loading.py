"""Loading VLM weights: device/dtype choice, bitsandbytes 4-bit (QLoRA) and 8-bit, attention implementation."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

QUANTIZATIONS = (None, "4bit", "8bit")


def pick_device(device: str | None = None) -> str:
    """``auto``/None → ``cuda`` when available, else ``cpu``."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str | None, device: str) -> Any:
    """``auto``/None → bf16 on CUDA when supported, else fp32. Accepts float32/bfloat16/float16 names."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]


def quantization_config(quantization: str | None, *, skip_modules: list[str] | None = None) -> Any:
    """bitsandbytes config: ``4bit`` = NF4 + double quant (QLoRA), ``8bit`` = LLM.int8. ``skip_modules`` (the
    vision tower) stay in full precision in both: int8 matmuls break on SAM's 4-D inputs, and the vision
    encoder is small next to the language model while its precision matters most for OCR."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose 4bit, 8bit or none")
    if quantization is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            f"quantization {quantization!r} needs bitsandbytes: pip install 'deepsynth[train]'"
        )
    import torch
    from transformers import BitsAndBytesConfig

    skip_modules = [
        *(skip_modules or []),
        "lm_head",
    ]  # an explicit list replaces transformers' default (lm_head)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=skip_modules,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)


def attn_implementation(requested: str | None) -> str | None:
    """``auto`` → flash_attention_2 when CUDA + flash-attn are installed, else sdpa; None leaves the default."""
    if requested in (None, ""):
        return None
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def from_pretrained_kwargs(
    *,
    quantization: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    attn: str | None = None,
    skip_modules: list[str] | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``Auto*.from_pretrained`` covering device, dtype, quantization and attention."""
    dev = pick_device(device)
    kw: dict[str, Any] = {"dtype": pick_dtype(dtype, dev)}
    if dev != "cpu" or quantization:
        kw["device_map"] = {"": dev}
    qc = quantization_config(quantization, skip_modules=skip_modules)
    if qc is not None:
        kw["quantization_config"] = qc
        if quantization == "4bit":
            import torch

            kw["dtype"] = torch.bfloat16 if dtype in (None, "auto") else kw["dtype"]
    impl = attn_implementation(attn)
    if impl:
        kw["attn_implementation"] = impl
    if trust_remote_code:
        kw["trust_remote_code"] = True
    log.info("loading with %s", {k: str(v) for k, v in kw.items()})
    return kw


def is_quantized(model: Any) -> bool:
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "hf_quantizer", None) is not None
    )
