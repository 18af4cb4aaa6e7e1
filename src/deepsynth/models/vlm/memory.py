"""Weight memory and image tokens of a VLM, computed from its config (no weights are downloaded).

    python -m deepsynth.models.vlm.memory deepseek-community/DeepSeek-OCR-2 [--lora-r 16]

Parameters are counted on the ``meta`` device, so only ``config.json`` is read. The numbers are exact for
the weights; activations, KV cache and CUDA overhead come on top and depend on batch size, sequence length
and gradient checkpointing — measure them with ``torch.cuda.max_memory_allocated()`` on your GPU.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

GIB = 1024**3
# bytes per parameter of the stored weights
BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5}


def count_parameters(config: Any, model_class: Any = None) -> dict[str, int]:
    """Parameters per top-level part (vision / projector / language model / head) on the meta device."""
    import torch

    if model_class is None:
        from transformers import AutoModelForImageTextToText

        model_class = AutoModelForImageTextToText
    with torch.device("meta"):
        model = model_class.from_config(config)
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:2]) if name.startswith("model.") else name.split(".")[0]
        parts[key] = parts.get(key, 0) + p.numel()
    parts["total"] = sum(v for k, v in parts.items())
    return parts


def lora_parameters(config: Any, r: int) -> int:
    """LoRA parameters of the ``language_model`` preset (q/k/v/o + dense/shared-expert MLPs) at rank ``r``."""
    t = getattr(config, "text_config", config)
    h, layers = t.hidden_size, t.num_hidden_layers
    heads, kv = t.num_attention_heads, t.num_key_value_heads or t.num_attention_heads
    hd = getattr(t, "head_dim", None) or h // heads
    attn = r * (h + heads * hd) * 2 + r * (h + kv * hd) * 2  # q, o, k, v: r * (in + out) each
    kinds = getattr(t, "mlp_layer_types", None) or ["dense"] * layers
    mlp = 0
    for kind in kinds:
        inter = (
            t.intermediate_size
            if kind == "dense"
            else t.moe_intermediate_size * getattr(t, "n_shared_experts", 1)
        )
        mlp += 3 * r * (h + inter)
    return layers * attn + mlp


def estimate(config: Any, *, lora_r: int = 16) -> dict[str, Any]:
    """Weight memory (GiB) per storage type, LoRA size and AdamW state for the LoRA parameters."""
    params = count_parameters(config)
    n = params["total"]
    lora = lora_parameters(config, lora_r)
    return {
        "parameters": params,
        "weights_gib": {k: round(n * b / GIB, 2) for k, b in BYTES.items()},
        "lora_parameters": lora,
        # fp32 LoRA weights + grads + two AdamW moments
        "lora_training_state_gib": round(lora * 4 * 4 / GIB, 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="hub id or local checkpoint directory (only config.json is read)")
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args(argv)
    from transformers import AutoConfig

    print(json.dumps(estimate(AutoConfig.from_pretrained(args.model), lora_r=args.lora_r), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
