"""What reading with the character LM costs: CPU per line with and without it, on the same model and lines.

A fine-tuned PP-OCR model directory that holds an LM reader (``lm_decoder.json``, written by training with
``lm.enabled``) reads the given lines greedily and with the LM, alternating within each round. The declared
statistic is the median over rounds of the per-round ratio of CPU seconds (LM / greedy) with its
distribution-free CI; CPU time, because a shared machine stretches wall time. Also reports the CER of both reads
on those lines when they have ground truth (a sanity check, not the accuracy claim: bench_hard_documents is).

    python -m bench.bench_lm_reader MODEL_DIR SET [--rounds 5] [--lines 150]
    # SET: a folder of ../shared/data, its test split by the bench_hard_documents key
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.bench_hard_documents import DATA, SETS
from bench.stats import paired_ratio
from deepsynth.evaluation.metrics import cer
from deepsynth.models.registry import load_engine
from deepsynth.training.experiment import held_out

RESULTS = Path(__file__).resolve().parent / "results" / "lm_reader.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("set", choices=sorted(SETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lines", type=int, default=150)
    args = ap.parse_args(argv)
    engine = load_engine(args.model_dir)
    decoder = engine.lm_decoder
    if decoder is None:
        raise SystemExit(f"{args.model_dir} reads greedily (no lm_decoder.json): nothing to compare")
    folder, key = SETS[args.set]
    lines = held_out([str(DATA / folder)], key=key, seed=0).test[: args.lines]
    images, refs = [s.image for s in lines], [s.text for s in lines]
    cpu: dict[str, list[float]] = {"greedy": [], "lm": []}
    texts: dict[str, list[str]] = {}
    for r in range(args.rounds):
        for name in ("greedy", "lm") if r % 2 == 0 else ("lm", "greedy"):
            engine.lm_decoder = decoder if name == "lm" else None
            t0 = time.process_time()
            texts[name] = [p.text for p in engine.recognize(images)]
            cpu[name].append(time.process_time() - t0)
        print(f"round {r + 1}: greedy {cpu['greedy'][-1]:.2f} s, lm {cpu['lm'][-1]:.2f} s CPU", flush=True)
    ratio = paired_ratio([a / b for a, b in zip(cpu["lm"], cpu["greedy"], strict=True)])
    result = {
        "model": args.model_dir,
        "set": args.set,
        "lines": len(lines),
        "decoder": {
            "order": decoder.order,
            "alpha": decoder.alpha,
            "beta": decoder.beta,
            "beam": decoder.beam,
        },
        "cpu_seconds_per_line": {k: round(min(v) / len(lines), 4) for k, v in cpu.items()},
        "cpu_ratio_lm_vs_greedy": ratio,
        "cer": {k: round(cer(refs, v), 4) for k, v in texts.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []
    runs = [x for x in runs if (x["model"], x["set"]) != (args.model_dir, args.set)] + [result]
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
