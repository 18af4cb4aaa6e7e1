"""Export a LoRA run as a merged full model, with a numerical parity check.

    python -m deepsynth.models.vlm.export runs/deepseek_ocr2_lora/final exports/deepseek-ocr2-merged

Steps: load the saved adapter (exactly, see ``peft_io``) → logits on a probe batch → merge → logits again
(merged vs unmerged) → ``save_pretrained`` → reload with plain transformers → logits again (exported vs
trained). Fails when either difference exceeds ``tolerance``; writes ``parity.json`` beside the model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from deepsynth.data.sample import Sample


def probe_samples(n: int = 2) -> list[Sample]:
    """Small rendered text lines used as the parity probe (no dataset needed)."""
    texts = ["DeepSynth parity probe 0123", "The quick brown fox."][:n]
    out = []
    for i, text in enumerate(texts):
        img = Image.new("RGB", (320, 40), "white")
        ImageDraw.Draw(img).text((6, 12), text, fill="black")
        out.append(Sample.from_image(f"probe{i}", img, text))
    return out


def export_merged(
    run_dir: str | Path, out_dir: str | Path, *, tolerance: float = 1e-3, **options: Any
) -> dict:
    """Merge the LoRA model saved in ``run_dir`` into ``out_dir``; returns the parity report."""
    from deepsynth.models.registry import load_engine

    adapter = load_engine(str(run_dir), **options)
    if not getattr(adapter, "has_lora", False):
        raise ValueError(f"{run_dir} holds no LoRA adapter to merge")
    batch = adapter.collate(probe_samples())
    trained = adapter.logits(batch)
    adapter.merge()
    merged = adapter.logits(batch)
    adapter.save(out_dir)
    device, dtype = adapter.device, next(p.dtype for p in adapter.model.parameters() if p.is_floating_point())
    where = {"device_map": {"": str(device)}} if device.type != "cpu" else {}  # reload where it was trained
    adapter.model = adapter.model_class().from_pretrained(str(out_dir), dtype=dtype, **where)
    reloaded = adapter.logits(batch)
    report = {
        "run_dir": str(run_dir),
        "out_dir": str(out_dir),
        "device": str(device),
        "dtype": str(dtype),
        "max_abs_diff_merged_vs_unmerged": float((merged - trained).abs().max()),
        "max_abs_diff_exported_vs_trained": float((reloaded - trained).abs().max()),
        "tolerance": tolerance,
    }
    report["ok"] = (
        max(report["max_abs_diff_merged_vs_unmerged"], report["max_abs_diff_exported_vs_trained"])
        <= tolerance
    )
    Path(out_dir, "parity.json").write_text(json.dumps(report, indent=2))
    if not report["ok"]:
        raise RuntimeError(f"merged model does not match the trained one: {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a directory saved by DeepSynth with a LoRA adapter (e.g. runs/x/final)")
    ap.add_argument("out_dir", help="where the merged model goes (loadable with plain transformers)")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument(
        "--dtype",
        default=None,
        help="weights to merge in (float32 | bfloat16; default: bf16 on CUDA, else fp32). Merging into bf16 "
        "weights moves logits by more than 1e-3 (rounding): use float32 for a strict parity check",
    )
    args = ap.parse_args(argv)
    options = {"dtype": args.dtype} if args.dtype else {}
    report = export_merged(args.run_dir, args.out_dir, tolerance=args.tolerance, **options)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
