"""The one LoRA preset table of every family (PP-OCR and the VLMs): names, meaning, defaults, one lookup.

A preset names *where* adapters go; each family offers the presets of :data:`PRESETS` it can place and maps
them to its own layers. Names are spelled with hyphens as in peft (``all-linear``); ``_`` is accepted for
``-`` (``all_linear``). An unknown name is a :class:`~deepsynth.config.ConfigError` listing the family's
presets — it is never passed on as a regex. A list in ``lora.targets`` names modules explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from deepsynth.config import ConfigError

DEFAULT_RANK = 8
DEFAULT_ALPHA = 16

PRESETS: dict[str, str] = {
    "all-linear": "every linear layer (PP-OCR: also 1x1 convs; VLMs: text decoder + vision tower)",
    "language-model": "attention + MLP projections of the text decoder only (the adapters vLLM can serve)",
    "all-linear+experts": "all-linear + DeepSeek-OCR-2's routed MoE experts (fused 3-D parameters)",
    "language-model+experts": "language-model + DeepSeek-OCR-2's routed MoE experts",
    "all": "PP-OCR: linear layers and every dense (3x3/2x2/1x1) conv",
    "linear": "PP-OCR: nn.Linear only (SVTR neck + classifier)",
    "conv": "PP-OCR: dense convs only",
}

T = TypeVar("T")


def canonical(name: str) -> str:
    """The table's spelling of a preset name (``all_linear`` → ``all-linear``)."""
    return name.strip().replace("_", "-")


def lookup(name: str, offered: Mapping[str, T], family: str) -> tuple[str, T]:
    """(canonical name, the family's value) for preset ``name``; ConfigError listing ``offered`` if unknown."""
    key = canonical(name)
    if key not in offered:
        raise ConfigError(
            f"unknown LoRA preset {name!r} for {family}; known: {', '.join(sorted(offered))} "
            "(or a list of module names in lora.targets)"
        )
    return key, offered[key]


def setting(settings: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of LoRA settings given as a LoraSettings-like object or a dict."""
    if isinstance(settings, Mapping):
        return settings.get(name, default)
    return getattr(settings, name, default)
