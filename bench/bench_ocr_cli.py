"""Batch OCR (`deepsynth ocr`): files/s with decoding ahead in a background thread vs decoding inline.

24 one-page PDFs made from fondue_en_print20 page scans, rendered at 150 dpi, read by the tiny DeepSeek-OCR-2
(random weights, 32 new tokens, 1 torch thread) in batches of 8 pages; both ways interleaved in rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
FILES = 24
ROUNDS = 3


def _inline(paths, limits, ahead: int = 2):
    """The reference: decode each file just before it is batched (what ocr_files did before decode_ahead)."""
    from deepsynth.inference.inputs import decode_file

    for path in paths:
        t0 = time.perf_counter()
        yield path, decode_file(path.read_bytes(), path.name, None, limits), time.perf_counter() - t0


def main() -> dict:
    import torch
    from PIL import Image

    from deepsynth.inference import batch_files
    from deepsynth.inference.batch_files import OFFLINE_LIMITS
    from deepsynth.inference.service import OCRService
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.observability import Observability

    root = DATA / "fondue_en_print20"
    if not root.is_dir():
        return {"skipped": f"no data at {DATA}"}
    torch.set_num_threads(1)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").open()]
    scans = [root / r["image"] for r in rows if r["level"] == "page"][:4]
    work = Path(tempfile.mkdtemp(prefix="bench_ocr_"))
    pdfs = []
    for i in range(FILES):
        pdf = work / f"page{i:02d}.pdf"
        Image.open(scans[i % len(scans)]).convert("RGB").save(pdf, "PDF", resolution=150)
        pdfs.append(pdf)
    service = OCRService("deepseek_ocr2:tiny", obs=Observability("bench", metrics=False))
    gen = GenerationConfig(max_new_tokens=32)
    service.warmup()
    limits = OFFLINE_LIMITS
    ahead = batch_files.decode_ahead
    rounds = []
    try:
        for _ in range(ROUNDS):
            rates = {}
            for name, fn in (("inline", _inline), ("ahead", ahead)):
                batch_files.decode_ahead = fn
                out = work / f"{name}.jsonl"
                out.unlink(missing_ok=True)
                t0 = time.perf_counter()
                summary = batch_files.ocr_files(
                    lambda images: service.recognize(images, gen),
                    pdfs,
                    out,
                    model_id="bench",
                    batch_pages=8,
                    limits=limits,
                    progress=False,
                )
                assert summary.ok == FILES, summary.errors
                rates[name] = FILES / (time.perf_counter() - t0)
            rounds.append(rates)
    finally:
        batch_files.decode_ahead = ahead
        shutil.rmtree(work, ignore_errors=True)
    return {
        "model": "deepseek_ocr2:tiny, 32 new tokens, 1 torch thread",
        "files": FILES,
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "inline_files_per_s": round(statistics.median(r["inline"] for r in rounds), 3),
        "decode_ahead_files_per_s": round(statistics.median(r["ahead"] for r in rounds), 3),
        "speedup": round(statistics.median(r["ahead"] / r["inline"] for r in rounds), 3),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
