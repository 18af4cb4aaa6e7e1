"""Optional GPU backends: Unsloth's FastVisionModel (``backend``) and flash attention (``attn_implementation``).

Every family is tried even when an earlier one fails, so one run tells which families work.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

from deepsynth.doctor.finetune import lora, train_check
from deepsynth.doctor.fixtures import checkpoint, line_samples
from deepsynth.doctor.runner import CheckContext, CheckFailed, Skip

OTHER_FAMILIES = ("deepseek_ocr2", "got_ocr2")  # not in Unsloth's list: auto must fall back, with the reason
FLASH_FAMILIES = ("deepseek_ocr2", "qwen2_5_vl")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def per_family(families: Iterable[str], fn: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """``fn(family)`` for each family; raises :class:`CheckFailed` naming the failures, with every result."""
    out: dict[str, Any] = {}
    failed: list[str] = []
    for family in families:
        try:
            out[family] = fn(family)
        except Skip:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded per family, reported together
            out[family] = {"error": _error(exc)}
            failed.append(f"{family}: {out[family]['error']}")
    if failed:
        raise CheckFailed("; ".join(failed), out)
    return out


def unsloth(ctx: CheckContext) -> dict[str, Any]:
    """``backend: auto`` trains through Unsloth on the families it supports, and falls back to peft with the
    reason on the others; ``backend: unsloth`` forced on those is tried and its outcome recorded."""
    from deepsynth.models.vlm import lora as lora_mod

    ok, why = lora_mod.unsloth_available()
    if not ok:
        raise Skip(why)

    def fallback(family: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"auto": lora_mod.resolve_backend("auto", family)}
        entry["fallback_reason"] = lora_mod.unsloth_available(family)[1]
        try:
            forced = train_check(ctx, family, f"{family}_lora.yaml", extra=["model.options.backend=unsloth"])[
                1
            ]
            entry["forced_unsloth"] = f"works (backend {forced['backend']}, losses {forced['losses']})"
        except Exception as exc:  # noqa: BLE001 - recorded: the fallback is what users get
            entry["forced_unsloth"] = _error(exc)
        if entry["auto"] != "peft":
            raise AssertionError(f"backend auto chose {entry['auto']} for a family Unsloth does not list")
        return entry

    def supported(family: str) -> dict[str, Any]:
        details = train_check(ctx, family, f"{family}_lora.yaml", extra=["model.options.backend=auto"])[1]
        if details["backend"] != "unsloth":
            raise AssertionError(f"backend auto chose {details['backend']}, not unsloth")
        return details

    out: dict[str, Any] = {}
    failures: list[str] = []
    for families, fn in ((lora_mod.UNSLOTH_FAMILIES, supported), (OTHER_FAMILIES, fallback)):
        try:
            out.update(per_family(families, fn))
        except CheckFailed as exc:
            out.update(exc.details)
            failures.append(str(exc))
    if failures:
        raise CheckFailed("; ".join(failures), out)
    out["step_seconds"] = out[lora_mod.UNSLOTH_FAMILIES[0]].get("step_seconds")
    return out


def _logits(family: str, attn: str) -> tuple[Any, str]:
    from deepsynth.models.registry import load_engine

    adapter = load_engine(f"{family}:{checkpoint(family)}", attn_implementation=attn)
    impl = str(adapter.model.config._attn_implementation)
    return adapter.logits(adapter.collate(line_samples(2))), impl


def flash_attention(ctx: CheckContext) -> dict[str, Any]:
    """``attn_implementation: auto`` picks flash-attention-2 on CUDA when installed; logits match sdpa's
    (both bf16) within 2% of their scale; a LoRA run trains through it."""
    if importlib.util.find_spec("flash_attn") is None:
        raise Skip("flash-attn is not installed (pip install --no-build-isolation flash-attn)")

    def parity(family: str) -> dict[str, Any]:
        flash, impl = _logits(family, "auto")
        if ctx.require_cuda and impl != "flash_attention_2":
            raise AssertionError(f"attn_implementation auto gave {impl}, not flash_attention_2")
        sdpa, _ = _logits(family, "sdpa")
        diff, scale = float((flash - sdpa).abs().max()), float(sdpa.abs().max())
        if diff > 0.02 * max(scale, 1.0):
            raise AssertionError(f"flash vs sdpa logits differ by {diff:.4g} (scale {scale:.3g})")
        return {"attn_implementation": impl, "max_abs_diff_vs_sdpa": diff, "logit_scale": scale}

    out = per_family(FLASH_FAMILIES, parity)
    trained = lora(ctx, "qwen2_5_vl")
    out["lora_attn_implementation"] = trained["attn_implementation"]
    out["step_seconds"] = trained["step_seconds"]
    return out


def model_unsloth(ctx: CheckContext) -> dict[str, Any]:
    """``--model PATH``: ``backend: auto`` on the real checkpoint trains through Unsloth where it applies."""
    from deepsynth.doctor.fixtures import model_family
    from deepsynth.models.vlm import lora as lora_mod

    if not ctx.model:
        raise Skip("no --model given")
    family, path = model_family(ctx.model)
    ok, why = lora_mod.unsloth_available(family)
    if not ok:
        raise Skip(why)
    details = train_check(ctx, family, f"{family}_lora.yaml", path, ["model.options.backend=auto"])[1]
    if details["backend"] != "unsloth":
        raise AssertionError(f"backend auto chose {details['backend']}, not unsloth")
    return details
