"""Data-layer benchmark: streaming read + decode throughput per format, and peak RSS for 1k vs 100k samples.

Throughput: the same 2,000 synthetic lines (400x50-ish PNGs) written as JSONL manifest, Parquet, WebDataset and
a .gt.txt folder, then streamed with ``open_sources(decode=True)``; plus the real tapuscorpus_fr lines (JSONL
in place vs converted Parquet) when ../shared/data is present.
RSS: each size streamed in a fresh subprocess (tiny 32x8 images so 100k samples take seconds); peak RSS
(VmHWM) compared, goal: 100k within 10% of 1k (WebDataset: 20k, see RSS_BIG).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
N_THROUGHPUT = 2000
RSS_SIZES = (1_000, 100_000)
RSS_FORMATS = ("jsonl", "parquet", "webdataset")
# Python's tarfile parses ~1.5k headers/s per core here, so WebDataset's big run is 20k to keep the bench short
RSS_BIG = {"jsonl": 100_000, "parquet": 100_000, "webdataset": 20_000}


def _stream_rate(spec: str, fmt: str | None = None) -> dict:
    from deepsynth.data import open_sources

    t0 = time.perf_counter()
    n = pixels = 0
    for s in open_sources([spec], decode=True, format=fmt):
        pixels += s.image.width * s.image.height
        s.release()
        n += 1
    dt = time.perf_counter() - t0
    return {
        "samples": n,
        "seconds": round(dt, 3),
        "samples_per_s": round(n / dt, 1),
        "mpx_per_s": round(pixels / dt / 1e6, 2),
    }


def _write(samples, fmt: str, out: Path) -> None:
    from deepsynth.data import open_writer

    with open_writer(fmt, out, shard_size=1000) as w:
        for s in samples:
            w.write(s)


def throughput(tmp: Path) -> dict:
    from deepsynth.data import ImageRef, Sample, open_sources, synthetic_samples
    from deepsynth.data.images import encode_image

    synth = synthetic_samples(n=200, seed=0, languages=["en", "de", "fr"])
    distinct = [(s.text, encode_image(s.image, "png")) for s in synth]

    def samples():
        for i in range(N_THROUGHPUT):
            text, data = distinct[i % len(distinct)]
            sid = f"syn-{i:06d}"
            yield Sample(sid, text, image_loader=ImageRef(sid, data=data), language="en", subset="synthetic")

    import pyarrow.parquet  # noqa: F401 - imports out of the timed loops (webdataset pulls in torch)
    import webdataset  # noqa: F401

    out = {}
    for fmt in ("jsonl", "parquet", "webdataset", "folder"):
        _write(samples(), fmt, tmp / f"tp_{fmt}")
        out[fmt] = _stream_rate(str(tmp / f"tp_{fmt}"), fmt)
    real = SHARED / "tapuscorpus_fr"
    if real.is_dir():
        _write(open_sources([str(real)]), "parquet", tmp / "real_parquet")
        _stream_rate(str(real))
        out["real_tapuscorpus_jsonl"] = _stream_rate(str(real))
        _stream_rate(str(tmp / "real_parquet"))
        out["real_tapuscorpus_parquet"] = _stream_rate(str(tmp / "real_parquet"))
    return out


def _make_rss_source(tmp: Path, fmt: str, n: int) -> Path:
    """n tiny samples; the JSONL manifest points all rows at 64 small files (the manifest is the stream)."""
    import io

    from PIL import Image

    from deepsynth.data import ImageRef, Sample, open_writer

    imgs = []
    for k in range(64):
        buf = io.BytesIO()
        Image.new("L", (32, 8), 4 * k).save(buf, format="PNG")
        imgs.append(buf.getvalue())
    out = tmp / f"rss_{fmt}_{n}"

    def text(i: int) -> str:
        return f"line {i} " + "x" * (i % 40)

    if fmt == "jsonl":
        (out / "images").mkdir(parents=True)
        for k, data in enumerate(imgs):
            (out / "images" / f"{k}.png").write_bytes(data)
        with (out / "manifest.jsonl").open("w") as fh:
            for i in range(n):
                row = {"id": f"s{i:07d}", "image": f"images/{i % 64}.png", "text": text(i), "language": "en"}
                fh.write(json.dumps({**row, "subset": f"b{i % 50}", "level": "line"}) + "\n")
        return out
    with open_writer(fmt, out, shard_size=10_000) as w:
        for i in range(n):
            sid = f"s{i:07d}"
            w.write(Sample(sid, text(i), image_loader=ImageRef(sid, data=imgs[i % 64]), language="en"))
    return out


def _rss_child(path: str, fmt: str) -> None:
    """Subprocess body: stream everything with decode, print peak RSS and the RSS after the first 200."""
    from deepsynth.data import open_sources

    def status_mb(field: str) -> float:  # VmRSS now / VmHWM peak of this process (reset at exec)
        with open("/proc/self/status") as fh:
            line = next(x for x in fh if x.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    def rss_mb() -> float:
        return status_mb("VmRSS")

    n = 0
    warm = None
    t0 = time.perf_counter()
    for s in open_sources([path], decode=True, format=fmt):
        _ = s.image
        s.release()
        n += 1
        if n == 200:
            warm = rss_mb()
    peak = status_mb("VmHWM")
    dt = time.perf_counter() - t0
    print(json.dumps({"n": n, "rss_after_200_mb": round(warm or rss_mb(), 1), "peak_rss_mb": round(peak, 1),
                      "samples_per_s": round(n / dt, 1)}))  # fmt: skip


def rss(tmp: Path) -> dict:
    out: dict = {}
    for fmt in RSS_FORMATS:
        row = {}
        for n in (RSS_SIZES[0], RSS_BIG[fmt]):
            src = _make_rss_source(tmp, fmt, n)
            cmd = [sys.executable, "-m", "bench.bench_data", "--rss-child", str(src), fmt]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            row[str(n)] = json.loads(res.stdout.strip().splitlines()[-1])
        small, big = row[str(RSS_SIZES[0])], row[str(RSS_BIG[fmt])]
        row["peak_ratio"] = round(big["peak_rss_mb"] / small["peak_rss_mb"], 3)
        row["within_10pct"] = row["peak_ratio"] <= 1.10
        out[fmt] = row
    return out


def main() -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as d:
        tmp = Path(d)
        result = {"throughput_decode": throughput(tmp)}
        result["rss_stream"] = rss(tmp)
    result["all_rss_within_10pct"] = all(v["within_10pct"] for v in result["rss_stream"].values())
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(main(), indent=2))
