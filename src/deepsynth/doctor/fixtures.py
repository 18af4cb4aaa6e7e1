"""What the GPU checks train and serve: rendered lines, tiny checkpoints (or ``--model``), the repo's recipes."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import deepsynth
from deepsynth.data.sample import Sample

TEXTS = ["The quick brown fox 42", "jumps over the lazy dog", "OCR on a GPU, 1897", "DeepSynth doctor"]
# config.json model_type -> DeepSynth family, for `--model PATH` of a plain transformers checkpoint
MODEL_TYPES = {
    "deepseek_ocr2": "deepseek_ocr2",
    "got_ocr2": "got_ocr2",
    "lighton_ocr": "lighton_ocr",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "vision-encoder-decoder": "trocr",
}


def line_samples(n: int = 8) -> list[Sample]:
    """``n`` rendered text lines (installed fonts via ``synthetic_samples``; PIL's own font without any)."""
    from deepsynth.data.fonts import installed_fonts

    if installed_fonts():
        from deepsynth.data.synth import synthetic_samples

        return list(synthetic_samples(TEXTS, n=n, seed=0))
    from deepsynth.models.vlm.export import probe_samples

    base = probe_samples()
    return [
        Sample.from_image(f"line{i}", base[i % len(base)].image, base[i % len(base)].text) for i in range(n)
    ]


def recipe(name: str) -> Path | None:
    """``configs/NAME`` of the source checkout, else of the working directory (the Docker images' /workspace);
    None when neither has it (the overrides then say it all)."""
    roots = (Path(deepsynth.__file__).resolve().parents[2], Path.cwd())
    return next((p for root in roots if (p := root / "configs" / name).is_file()), None)


def checkpoint(family: str) -> str:
    """A tiny random-weight model of ``family`` saved with ``save_pretrained``: loaded like a real checkpoint
    (device, dtype, quantization and attention chosen by the same code), without any download."""
    from deepsynth.testing.tiny_models import tiny_checkpoint

    return str(tiny_checkpoint(family))


def model_family(spec: str) -> tuple[str, str]:
    """``FAMILY:PATH`` or ``PATH`` → (family, path); the family of a bare path comes from its config.json or
    the model card DeepSynth writes."""
    family, sep, path = spec.partition(":")
    if sep and family in MODEL_TYPES.values():
        return family, path
    root = Path(spec)
    card, config = root / "deepsynth_model.json", root / "config.json"
    if card.is_file():
        return json.loads(card.read_text())["family"], spec
    if not config.is_file():
        raise ValueError(f"--model {spec}: no config.json or deepsynth_model.json there (give FAMILY:PATH)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"--model {spec}: model_type {model_type!r} is not a DeepSynth family "
            f"({', '.join(sorted(MODEL_TYPES))}); give FAMILY:PATH"
        )
    return MODEL_TYPES[model_type], spec


class StepTimer:
    """Trainer callback: wall time between optimizer steps (the first step, with its warm-up, is left out)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, _trainer: Any) -> None:
        self.stamps.append(time.perf_counter())

    def median(self) -> float | None:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return statistics.median(gaps) if gaps else None
