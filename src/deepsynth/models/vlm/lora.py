"""LoRA for the VLM adapters: each family's placement of the presets, settings coercion, backend choice.

Preset names and defaults come from the one table, :mod:`deepsynth.models.lora_presets`. Every VLM family
offers ``language-model`` (text decoder attention + MLP, the adapters vLLM can serve) and ``all-linear`` (plus
the vision tower's linear layers). DeepSeek-OCR-2 adds ``+experts`` variants that also adapt the routed MoE
experts, which are fused 3-D parameters rather than Linear layers and are reached through peft's
``target_parameters``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

from deepsynth.models.lora_presets import DEFAULT_ALPHA, DEFAULT_RANK, lookup, setting

log = logging.getLogger(__name__)

BACKENDS = ("auto", "peft", "unsloth")


@dataclass
class LoraPreset:
    """Where LoRA goes: a full-match regex over module names and optional fused parameter names."""

    target_modules: str
    target_parameters: list[str] | None = None
    description: str = ""


LM_LINEAR = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.(gate_proj|up_proj|down_proj))"
)
"""Attention + MLP projections of a Qwen/Llama-style text decoder at ``model.language_model``."""


def decoder_presets(vision_linear: str, vision_description: str) -> dict[str, LoraPreset]:
    """``language-model`` (:data:`LM_LINEAR`) and ``all-linear`` (plus ``vision_linear``) presets."""
    return {
        "language-model": LoraPreset(LM_LINEAR, None, "text decoder attention + MLP"),
        "all-linear": LoraPreset(
            f"{LM_LINEAR}|{vision_linear}", None, f"language model + {vision_description}"
        ),
    }


@dataclass
class LoraSpec:
    """Resolved LoRA settings (what peft needs), built from the trainer's ``LoraSettings`` or a dict."""

    r: int = DEFAULT_RANK
    alpha: int = DEFAULT_ALPHA
    dropout: float = 0.0
    target_modules: str | list[str] = ""
    target_parameters: list[str] | None = None
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lora_enabled(settings: Any) -> bool:
    """True unless ``settings`` is None or says ``enabled: false``."""
    return settings is not None and bool(setting(settings, "enabled", True))


def resolve_lora(settings: Any, presets: dict[str, LoraPreset], family: str) -> LoraSpec:
    """Turn ``LoraSettings``/dict (r, alpha, dropout, targets, target_parameters, preset) into a :class:`LoraSpec`.

    ``targets`` may be a preset name (str) or an explicit list of module names; ``preset`` wins when both
    are given; neither means ``language-model``. Unknown preset names raise a ConfigError listing the family's.
    """
    targets = setting(settings, "targets")
    preset_name = setting(settings, "preset") or (targets if isinstance(targets, str) else None)
    if preset_name is None and not targets:
        preset_name = "language-model"
    spec = LoraSpec(
        r=int(setting(settings, "r") or DEFAULT_RANK),
        alpha=int(setting(settings, "alpha") or DEFAULT_ALPHA),
        dropout=float(setting(settings, "dropout") or 0.0),
    )
    if preset_name is not None:
        spec.preset, p = lookup(preset_name, presets, family)
        spec.target_modules = p.target_modules
        spec.target_parameters = list(p.target_parameters) if p.target_parameters else None
    else:
        spec.target_modules = list(targets)
    explicit_params = setting(settings, "target_parameters")
    if explicit_params:
        spec.target_parameters = list(explicit_params)
    return spec


def peft_config(spec: LoraSpec) -> Any:
    """The peft ``LoraConfig`` for a resolved spec."""
    from peft import LoraConfig

    kw: dict[str, Any] = {}
    if spec.target_parameters:
        kw["target_parameters"] = spec.target_parameters
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
        **kw,
    )


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a train extra
        return False
    return torch.cuda.is_available()


# Families whose architecture Unsloth's FastVisionModel lists as supported: ``backend: auto`` picks Unsloth only
# for these. ``backend: unsloth`` still tries any family (``make gpu-check`` reports which ones work).
UNSLOTH_FAMILIES = ("qwen2_5_vl", "qwen3_vl")


def unsloth_available(family: str | None = None) -> tuple[bool, str]:
    """Whether the Unsloth backend can run here (for ``family`` under ``auto``), and why not."""
    if not cuda_available():
        return False, "no CUDA device (Unsloth's FastVisionModel does not support CPU)"
    if importlib.util.find_spec("unsloth") is None:
        return False, "the 'unsloth' package is not installed (pip install 'deepsynth[gpu]')"
    if family is not None and family not in UNSLOTH_FAMILIES:
        return False, f"{family} is not among Unsloth's vision architectures ({', '.join(UNSLOTH_FAMILIES)})"
    return True, ""


def resolve_backend(requested: str | None, family: str | None = None) -> str:
    """``auto`` → unsloth when CUDA+unsloth are present and ``family`` is one Unsloth supports, else peft
    (logged with the reason). ``unsloth`` without CUDA+unsloth raises."""
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown training backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "unsloth":
        ok, why = unsloth_available()
        if not ok:
            raise RuntimeError(
                f"backend 'unsloth' requested but unavailable: {why}. Use backend: peft (or auto)."
            )
    if requested == "auto":
        ok, why = unsloth_available(family)
        chosen = "unsloth" if ok else "peft"
        log.info("training backend: %s%s", chosen, "" if ok else f" (unsloth unavailable: {why})")
        return chosen
    return requested
