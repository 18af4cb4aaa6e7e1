"""The Hugging Face model card (``README.md``) of a saved model directory: YAML metadata with a ``model-index``
of the evaluation results, the base model, licence and data fingerprints, then how to load and serve it.
``push_to_hub`` publishes it as the model's page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deepsynth.training.config import TrainConfig

# licences of the base models DeepSynth knows for sure; any other family says "other" and names its base model
KNOWN_BASES = {
    "ppocr": (
        "apache-2.0",
        "PP-OCRv6-small text recogniser (PaddleOCR, Apache-2.0; shipped as ONNX in rapidocr)",
    ),
}
METRICS = (("cer", "CER"), ("wer", "WER"), ("ned", "NED"), ("exact_match", "exact lines"))


def _hub_id(path: str | None) -> str | None:
    """``org/name`` when the model path looks like a hub id rather than a local folder."""
    if not path or Path(path).expanduser().exists() or path.count("/") != 1 or path.startswith((".", "/")):
        return None
    return path


def _dataset_names(specs: list[str]) -> list[str]:
    return [s.split("=", 1)[0] if "=" in s and "/" not in s.split("=", 1)[0] else Path(s).name for s in specs]


def model_card(
    cfg: TrainConfig, *, name: str, step: int, metrics: dict[str, Any], data: dict[str, dict[str, Any]]
) -> str:
    """The card's text. ``metrics``: the evaluation summary of this model (may be empty); ``data``: the
    fingerprints of the train/eval samples (``{"train": {"n", "sha256"}, "eval": ...}``)."""
    family = cfg.model.family
    licence, base_text = KNOWN_BASES.get(family, ("other", f"`{cfg.model.path or family}`"))
    base_id = _hub_id(cfg.model.path)
    lora = bool(cfg.lora.enabled)
    train_names = _dataset_names(cfg.data.train)
    eval_specs = cfg.data.eval or cfg.data.train
    eval_split = None if cfg.data.eval else cfg.data.eval_split
    meta: dict[str, Any] = {"library_name": "deepsynth", "pipeline_tag": "image-to-text", "license": licence}
    if base_id:
        meta["base_model"] = base_id
    meta["tags"] = ["ocr", "deepsynth", family, *(["lora"] if lora else [])]
    meta["datasets"] = train_names
    scored = [(key, label) for key, label in METRICS if isinstance(metrics.get(key), (int, float))]
    if scored:
        dataset = {
            "name": " + ".join(_dataset_names(eval_specs)),
            "type": "+".join(_dataset_names(eval_specs)),
        }
        if eval_split:
            dataset["split"] = eval_split
        norm = metrics.get("normalize", cfg.eval.normalize)
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-to-text", "name": "Optical character recognition"},
            "dataset": dataset,
            "metrics": [{"type": key, "value": round(float(metrics[key]), 6), "name": f"{label} (normalize={norm})"}
                        for key, label in scored],
        }]}]  # fmt: skip
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {name}", ""]
    averaged = f" (moving average of the weights, decay {cfg.ema.decay:g})" if cfg.ema.decay else ""
    lines += [f"OCR model fine-tuned with DeepSynth from the {base_text}"
              f"{' with LoRA' if lora else ''}, saved at step {step}{averaged}.", ""]  # fmt: skip
    if scored:
        n = metrics.get("n", data.get("eval", {}).get("n", "?"))
        lines += [f"## Evaluation ({n} samples of {', '.join(_dataset_names(eval_specs))}"
                  f"{f', split {eval_split}' if eval_split else ''})", "",
                  "| metric | value |", "|---|---|"]  # fmt: skip
        lines += [f"| {label} | {100 * float(metrics[key]):.2f}% |" for key, label in scored]
        lines += ["", f"Normalisation: `{metrics.get('normalize', cfg.eval.normalize)}`.", ""]
    lines += [
        "## Data",
        "",
        "| split | sources | samples | sha256 of (id, text) in order |",
        "|---|---|---|---|",
    ]
    for split, specs in (("train", cfg.data.train), ("eval", eval_specs)):
        fp = data.get(split) or {}
        lines.append(f"| {split} | {', '.join(f'`{s}`' for s in specs)} | {fp.get('n', '?')} | "
                     f"`{fp.get('sha256', '?')}` |")  # fmt: skip
    lines += ["", "`training_info.json` holds the full training config; `run.yaml` next to this directory the "
              "git commit and package versions.", ""]  # fmt: skip
    lines += _usage(family, lora)
    return "\n".join(lines) + "\n"


def _usage(family: str, lora: bool) -> list[str]:
    out = ["## Use", "", "```bash", "deepsynth serve --model THIS_DIR        # HTTP API (OpenAI-compatible too)",
           "deepsynth ocr scans/ --model THIS_DIR --out results.jsonl",
           "deepsynth eval -e THIS_DIR -d mine=path/to/manifest.jsonl -o runs/eval", "```", "",
           "```python", "from PIL import Image", "from deepsynth.models.registry import load_engine", "",
           'engine = load_engine("THIS_DIR")', 'print(engine.recognize([Image.open("line.png")])[0].text)',
           "```", ""]  # fmt: skip
    if family == "ppocr" and not lora:
        out += ["Plain transformers restores the whole model, head included, with "
                "`AutoModelForTextRecognition.from_pretrained(THIS_DIR)` (per-frame probabilities equal "
                "DeepSynth's); `AutoModel` loads the backbone only. Text comes from greedy CTC over "
                "`charset.json` (class 0 is the blank, class i is `chars[i - 1]`; collapse repeats, drop blanks) "
                "after DeepSynth's preprocessing (`deepsynth_model.json`: height 48, BGR, x/127.5-1); "
                "transformers' own image processor needs torchvision and does not know added characters, so "
                "no processor config is saved.", ""]  # fmt: skip
    elif lora:
        out += ["The LoRA adapter lives in this directory next to the base weights: load it with DeepSynth "
                "(above); plain transformers would load the base model without the adapter.", ""]  # fmt: skip
    return out


def write_model_card(directory: Path, cfg: TrainConfig, **kwargs: Any) -> Path:
    """Write ``directory/README.md`` (see :func:`model_card`); the name is the run folder / model folder."""
    path = Path(directory) / "README.md"
    name = f"{Path(cfg.output_dir).name}-{kwargs.pop('name', 'model')}"
    path.write_text(model_card(cfg, name=name, **kwargs), encoding="utf-8")
    return path
