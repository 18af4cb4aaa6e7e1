"""Saving and reloading LoRA adapters without losing weights.

With transformers 5.23 + peft 0.21.2, ``PeftModel.from_pretrained`` / ``model.load_adapter`` on
DeepSeek-OCR-2 silently drop every language-model LoRA weight: a v5 checkpoint key-renaming rule turns
``language_model.layers.`` into ``language_model.language_model.layers.`` so the saved tensors match
nothing (only a "missing adapter keys" warning). :func:`load_lora` avoids peft's loading path entirely: it
rebuilds the peft model from the saved ``PeftConfig`` and copies every saved tensor in by name, failing
loudly when any saved or expected key is unmatched. It is used for every family.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _strip_adapter_name(key: str, adapter_name: str) -> str:
    return re.sub(rf"\.{re.escape(adapter_name)}(?=\.|$)", "", key)


def lora_state_keys(model: Any, adapter_name: str = "default") -> dict[str, str]:
    """Map saved-format key → live state-dict key for every adapter tensor of ``model``."""
    out = {}
    for key in model.state_dict():
        if f".{adapter_name}." in key or key.endswith(f".{adapter_name}"):
            out[_strip_adapter_name(key, adapter_name)] = key
    return out


def load_lora(base_model: Any, adapter_dir: str | Path, *, is_trainable: bool = False) -> Any:
    """Wrap ``base_model`` with the adapter saved in ``adapter_dir`` and load its tensors exactly.

    Raises RuntimeError naming keys when the saved file and the rebuilt model disagree.
    """
    from peft import PeftConfig, get_peft_model
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {adapter_dir}")
    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not is_trainable
    model = get_peft_model(base_model, config)
    copy_adapter_tensors(model, load_file(str(weights)), "default", adapter_dir)
    if not is_trainable:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def copy_adapter_tensors(model: Any, saved: dict[str, Any], adapter_name: str, where: str | Path) -> None:
    """Copy the saved tensors of one adapter into ``model``'s adapter ``adapter_name`` by name (shapes
    checked); raises RuntimeError naming keys when the file (``where``) and the model disagree."""
    import torch

    live = lora_state_keys(model, adapter_name)
    missing_in_model = sorted(set(saved) - set(live))
    missing_in_file = sorted(set(live) - set(saved))
    if missing_in_model or missing_in_file:
        raise RuntimeError(
            f"adapter {where} does not match the rebuilt model: "
            f"{len(missing_in_model)} saved key(s) unmatched (e.g. {missing_in_model[:3]}), "
            f"{len(missing_in_file)} model key(s) not in the file (e.g. {missing_in_file[:3]})"
        )
    state = model.state_dict()
    with torch.no_grad():
        for saved_key, live_key in live.items():
            target = state[live_key]
            src = saved[saved_key]
            if tuple(src.shape) != tuple(target.shape):
                raise RuntimeError(
                    f"adapter tensor {saved_key}: shape {tuple(src.shape)} != {tuple(target.shape)}"
                )
            target.copy_(src.to(device=target.device, dtype=target.dtype))
