"""Token streaming: time to the first text vs the whole answer, through the real serving path.

A server on loopback (uvicorn, the app of ``deepsynth serve``) runs tiny DeepSeek-OCR-2 (random weights) in
its model process; the official ``openai`` SDK asks for the same page with ``stream: true`` and without, in
alternating order per round. Two per-round ratios, each with the declared statistic of bench/stats.py
(median of per-round paired ratios over interleaved rounds, distribution-free CI):

* ``first_text``: time to the first non-empty content chunk (streamed) / latency of the plain answer
  (goal <= 0.25 with TOKENS tokens: the text starts long before the answer would have arrived);
* ``overhead``: last chunk of the streamed answer / plain answer (what streaming costs; goal <= 1.10).

    nice -n 10 python bench/bench_stream.py [--rounds 9] [--tokens 128]   # -> bench/results/stream.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    import openai
    from PIL import Image
    from tests.serving_engines import data_uri, running_server

    from bench.stats import paired_ratio
    from deepsynth.inference.api import create_app
    from deepsynth.inference.model_process import ProcessEngine
    from deepsynth.inference.service import OCRService
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.observability import Observability

    img = Image.new("RGB", (96, 96), "white")
    img.paste((0, 0, 0), (10, 40, 80, 50))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(img)}}]}]
    rows = []
    with ProcessEngine("deepseek_ocr2:tiny", threads=1) as engine:
        service = OCRService(
            engine, model_id="tiny", generation=GenerationConfig(), max_wait_ms=1, obs=Observability("tiny")
        )
        with running_server(create_app(service)) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)

            def plain() -> float:
                t0 = time.perf_counter()
                r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=args.tokens)
                assert r.usage.completion_tokens == args.tokens
                return time.perf_counter() - t0

            def streamed() -> tuple[float, float]:
                t0, first = time.perf_counter(), None
                for chunk in client.chat.completions.create(
                    model="tiny", messages=messages, max_tokens=args.tokens, stream=True
                ):
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                return first or float("nan"), time.perf_counter() - t0

            plain()  # warm-up of both paths
            streamed()
            for r in range(args.rounds):
                if r % 2:
                    p, (first, total) = plain(), streamed()
                else:
                    (first, total), p = streamed(), plain()
                rows.append({"plain_s": p, "first_text_s": first, "streamed_s": total})
    result = {
        "what": f"tiny DeepSeek-OCR-2 in its model process, {args.tokens} new tokens, openai SDK over loopback",
        "first_text": paired_ratio([r["first_text_s"] / r["plain_s"] for r in rows], goal=0.25),
        "overhead": paired_ratio([r["streamed_s"] / r["plain_s"] for r in rows], goal=1.10),
        "median_s": {k: round(sorted(r[k] for r in rows)[len(rows) // 2], 4) for k in rows[0]},
        "rounds": rows,
        "command": f"python bench/bench_stream.py --rounds {args.rounds} --tokens {args.tokens}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("first_text", "overhead", "median_s")}, indent=2))
    return result


if __name__ == "__main__":
    main()
