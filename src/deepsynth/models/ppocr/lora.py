"""LoRA (peft) for the PP-OCR recogniser: target presets, apply, save/load, merge.

Presets (``lora.preset`` or ``lora.targets`` as a string; names from :mod:`deepsynth.models.lora_presets`):
``all-linear`` (default) every ``nn.Linear`` and every 1x1 conv (a per-pixel linear layer), ``all`` also the
3x3/2x2 dense convs, ``linear`` only ``nn.Linear`` (SVTR neck + classifier), ``conv`` only dense convs.
Depthwise convs are never targeted. A list is passed to peft as module names; an unknown name is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepsynth.models.lora_presets import DEFAULT_ALPHA, DEFAULT_RANK, lookup, setting

# preset -> (nn.Linear?, 1x1 convs?, other dense convs?)
PRESETS: dict[str, tuple[bool, bool, bool]] = {
    "all-linear": (True, True, False),
    "all": (True, True, True),
    "linear": (True, False, False),
    "conv": (False, True, True),
}
HEAD = "head.head"


def has_lora(model: torch.nn.Module) -> bool:
    """True for a peft-wrapped model (checked without importing peft)."""
    return type(model).__module__.startswith("peft.")


def unwrap(model: torch.nn.Module) -> Any:
    """The transformers model inside a PeftModel (LoRA layers are injected in place), or the model itself."""
    return model.get_base_model() if has_lora(model) else model


def resolve_targets(model: torch.nn.Module, targets: Any) -> list[str]:
    """Module names for a preset (ConfigError for an unknown one), or the user's list unchanged."""
    if isinstance(targets, (list, tuple)):
        return list(targets)
    _, (linear, pointwise, dense) = lookup(targets or "all-linear", PRESETS, "ppocr")
    names: list[str] = []
    for name, mod in model.named_modules():
        is_conv = isinstance(mod, torch.nn.Conv2d) and mod.groups == 1  # depthwise convs never
        if (
            isinstance(mod, torch.nn.Linear)
            and linear
            or is_conv
            and (pointwise if tuple(mod.kernel_size) == (1, 1) else dense)
        ):
            names.append(name)
    return names


def apply_lora(model: torch.nn.Module, lora: Any, *, train_head: bool = False) -> tuple[Any, dict[str, Any]]:
    """Wrap ``model`` with LoRA adapters; ``lora`` is duck-typed (r, alpha, dropout, targets[, preset]).

    With ``train_head`` (the charset was extended) the classifier is trained in full (peft
    ``modules_to_save``) so the new classes can learn; it is then not a LoRA target.
    """
    from peft import LoraConfig, get_peft_model

    spec = setting(lora, "preset") or setting(lora, "targets")
    targets = resolve_targets(model, spec)
    if train_head:
        targets = [t for t in targets if t != HEAD]
    if not targets:
        raise ValueError(f"LoRA targets {spec!r} match no layer of the PP-OCR recogniser")
    settings = {
        "r": int(setting(lora, "r") or DEFAULT_RANK),
        "lora_alpha": int(setting(lora, "alpha") or DEFAULT_ALPHA),
        "lora_dropout": float(setting(lora, "dropout") or 0.0),
        "target_modules": targets,
        "modules_to_save": [HEAD] if train_head else None,
    }
    peft_model = get_peft_model(model, LoraConfig(**settings))
    return peft_model, {k: v for k, v in settings.items()} | {"spec": spec}


def base_state_dict(core: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights under their original names (LoRA factors and trained head copies left out)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in core.state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        out[key] = value
    return out


def save_lora(model: torch.nn.Module, directory: str | Path) -> None:
    model.save_pretrained(str(directory))


def load_lora(base: torch.nn.Module, directory: str | Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(directory), is_trainable=True)


def merge(model: torch.nn.Module) -> torch.nn.Module:
    return model.merge_and_unload()
