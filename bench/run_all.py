"""Run every benchmark in bench/ (modules named bench_*.py with a ``main() -> dict``).

Each writes bench/results/<name>.json; a summary table is printed. ``python -m bench.run_all NAME...`` runs a subset.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str]) -> int:
    RESULTS.mkdir(exist_ok=True)
    names = argv or sorted(p.stem for p in HERE.glob("bench_*.py"))
    failed = 0
    for name in names:
        name = name if name.startswith("bench_") else f"bench_{name}"
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(f"bench.{name}").main()
        except Exception:
            traceback.print_exc()
            failed += 1
            continue
        result.setdefault("wall_seconds", round(time.perf_counter() - t0, 2))
        out = RESULTS / f"{name.removeprefix('bench_')}.json"
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps(result, indent=2, ensure_ascii=False)[:2000])
        print(f"-> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
