"""One check in its own process: ``python -m deepsynth.doctor.worker MODULE:FUNCTION RESULT.json CONTEXT_JSON``.

Writes ``{"status", "reason", "error", "details", "peak_gpu_mib", "step_seconds"}`` to RESULT.json; the
runner reads it (and reports FAIL with the output's tail when the process dies before writing it).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from deepsynth.doctor.runner import FAIL, MIB, PASS, SKIP, CheckContext, Skip, peak_gpu_mib


def run(target: str, ctx: CheckContext) -> dict[str, Any]:
    module, _, name = target.partition(":")
    out: dict[str, Any] = {"status": PASS, "reason": "", "error": "", "details": {}}
    try:
        details = dict(getattr(importlib.import_module(module), name)(ctx) or {})
    except Skip as exc:
        out.update(status=SKIP, reason=str(exc))
        details = {}
    except BaseException as exc:  # noqa: BLE001 - any failure of the check is its result
        out.update(status=FAIL, reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        out["error"] = traceback.format_exc()
        details = dict(getattr(exc, "details", None) or {})
    step = details.pop("step_seconds", None)
    peak_bytes = details.pop("peak_gpu_bytes", None)  # measured elsewhere (e.g. a server's model process)
    out["step_seconds"] = round(float(step), 4) if step is not None else None
    peaks = [p for p in (peak_gpu_mib(), round(peak_bytes / MIB, 1) if peak_bytes else None) if p is not None]
    out["peak_gpu_mib"] = max(peaks) if peaks else None  # the larger of this process's and the reported one
    out["details"] = details
    return out


def main(argv: list[str]) -> int:
    target, result_file, ctx_json = argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # checks build their models locally: never download
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(target, CheckContext(**json.loads(ctx_json)))
    Path(result_file).write_text(json.dumps(result, indent=2, default=str))
    if result["error"]:
        print(result["error"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
