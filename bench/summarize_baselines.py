"""Collect baseline evaluation runs into bench/results/baselines.json and a README markdown table.

The runs themselves come from the CLI (line level, every line of each set; see README):

    deepsynth eval -e rapidocr --engine-opt threads=1 -d SET=../shared/data/SET -o runs/baselines/rapidocr_SET
    deepsynth eval -e tesseract -d SET=../shared/data/SET -o runs/baselines/tesseract_SET

    python -m bench.summarize_baselines runs/baselines
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deepsynth.evaluation.harness import compare_runs, load_run, score_records

ENGINES = ("rapidocr", "tesseract")
SETS = ("fondue_en_print20", "tapuscorpus_fr", "gt4histocr_dta19_lines")
RESULTS = Path(__file__).resolve().parent / "results" / "baselines.json"


def collect(root: Path) -> dict:
    rows = []
    for data in SETS:
        for engine in ENGINES:
            run = root / f"{engine}_{data}"
            if not (run / "predictions.jsonl").is_file():
                continue
            metrics, records = load_run(run)
            std, _ = score_records(records, "ocr_standard", bootstrap=1000)
            rows.append({
                "set": data, "engine": metrics["engine"], "level": "line", "n": metrics["n"],
                "excluded": metrics["excluded"]["counts"], "failed": len(metrics["unreadable"]) + len(metrics["engine_errors"]),
                "cer": metrics["cer"], "cer_ci": metrics["cer_ci"], "wer": metrics["wer"], "wer_ci": metrics["wer_ci"],
                "exact_match": metrics["exact_match"], "cer_ocr_standard": std["cer"], "cer_ocr_standard_ci": std["cer_ci"],
                "wer_ocr_standard": std["wer"], "seconds_per_line_median": metrics["seconds_per_image_median"],
            })  # fmt: skip
    comparisons = {}
    for data in SETS:
        a, b = root / f"rapidocr_{data}", root / f"tesseract_{data}"
        if (a / "predictions.jsonl").is_file() and (b / "predictions.jsonl").is_file():
            cmp = compare_runs(a, b)
            comparisons[data] = {"a": cmp["engine_a"], "b": cmp["engine_b"], "n": cmp["n_common"],
                                 "cer": cmp["metrics"]["cer"], "wer": cmp["metrics"]["wer"]}  # fmt: skip
    return {"comparisons_tesseract_minus_rapidocr": comparisons, "protocol": "line level, all lines of each set (has_untranscribed excluded), 95% bootstrap CIs; "
            "columns without suffix use normalize=none, *_ocr_standard use nfc+hyphen+collapse", "rows": rows}  # fmt: skip


def markdown(result: dict) -> str:
    out = ["| set | lines | engine | CER (none) | WER (none) | CER (ocr_standard) | exact lines | s/line |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lo, hi = r["cer_ci"]
        out.append(
            f"| {r['set']} | {r['n']} | {r['engine']} | {100 * r['cer']:.2f}% ({100 * lo:.2f}–{100 * hi:.2f}) | "
            f"{100 * r['wer']:.2f}% | {100 * r['cer_ocr_standard']:.2f}% | {100 * r['exact_match']:.1f}% | "
            f"{r['seconds_per_line_median']:.3f} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "runs/baselines")
    result = collect(root)
    result["markdown"] = markdown(result)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
