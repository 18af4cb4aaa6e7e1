"""`deepsynth ocr --ray` vs in-process `deepsynth ocr`: pages/s and the driver's peak memory.

Throughput: the same real line images (tapuscorpus_fr) read by RapidOCR with one onnxruntime thread per
engine, in-process (``ocr_files`` + ``OCRService``, what ``deepsynth ocr`` runs) and with ``ocr_on_ray`` on a
local Ray runtime (``num_cpus=2``) with 1 and 2 engine actors; the three are interleaved in rounds and
compared per round (paired ratios; the median and the range are reported). Each Ray run includes starting
its actor pool and loading the engines, as a user's job does; the steady-state rate (from the first to the
last finished shard, actors running) separates that start-up from the throughput a long job sees.

Driver memory: peak RSS of the driver process (sampled every 20 ms) for ``ocr --ray`` over ROWS_SMALL and
ROWS_BIG input files (hard links to a few line images, so the inputs are distinct files without using disk),
given as a sequence that makes each path on demand: what is measured is the pipeline's memory, not the file
list's (the CLI's ``expand_paths`` holds a sorted list of Paths, ~0.4 KB per file).

With BENCH_RAY_INPUTS=pages the throughput part reads whole scanned pages instead (fondue_en_print20, 2550x3300 px)
with RapidOCR's page mode (``rapidocr:page``: detection + recognition, ~5 s of one core per page): what a user's
million pages look like, and the CPU-bound engine the scaling goal is about. Line crops (tens of milliseconds each)
show the pipeline's own per-file overhead.

Environment: BENCH_RAY_INPUTS (lines | pages), BENCH_RAY_FILES (default 240 lines / 24 pages), BENCH_RAY_ROUNDS (3),
BENCH_RAY_ROWS_SMALL (1000), BENCH_RAY_ROWS_BIG (100000; 0 skips the memory part; BENCH_RAY_ROUNDS=0 skips the throughput part),
BENCH_RAY_MEM_SHARD (64, the CLI's default --shard-size; the window is RayOptions' default). The memory part reads
hard links to small real crops (the first word of a line, 64 px wide), so that 100k rows take minutes, not hours: the driver's memory depends on the number
of rows, not on what the engines read.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
INPUTS = os.environ.get("BENCH_RAY_INPUTS", "lines")
FILES = int(os.environ.get("BENCH_RAY_FILES", "24" if INPUTS == "pages" else "240"))
# pages per engine call (in-process and per Ray batch); a shard (an actor's task, the unit Ray balances
# over the actors) is 1 batch of pages (~13 s of work) or 2 batches of lines (~0.5 s)
BATCH = 2 if INPUTS == "pages" else 8
SHARD = BATCH if INPUTS == "pages" else 2 * BATCH
ROUNDS = int(os.environ.get("BENCH_RAY_ROUNDS", "3"))
ROWS_SMALL = int(os.environ.get("BENCH_RAY_ROWS_SMALL", "1000"))
ROWS_BIG = int(os.environ.get("BENCH_RAY_ROWS_BIG", "100000"))
MEM_SHARD = int(os.environ.get("BENCH_RAY_MEM_SHARD", "64"))  # the CLI's default --shard-size
ENGINE = "rapidocr:page" if INPUTS == "pages" else "rapidocr"
ENGINE_KWARGS = {"threads": 1}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled in a thread)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _in_process(files: list[Path], out: Path) -> float:
    from deepsynth.inference.batch_files import ocr_files
    from deepsynth.inference.service import OCRService
    from deepsynth.observability import Observability

    t0 = time.perf_counter()
    service = OCRService(ENGINE, obs=Observability(ENGINE, metrics=False), engine_kwargs=ENGINE_KWARGS)
    summary = ocr_files(service.recognize, files, out, model_id=ENGINE, batch_pages=BATCH, progress=False)
    assert summary.ok == len(files), summary.errors[:3]
    return len(files) / (time.perf_counter() - t0)


STEADY: dict[int, list[float]] = {1: [], 2: []}  # files/s from the first to the last finished shard


def _on_ray(
    files: Sequence[Path],
    out: Path,
    workers: int,
    engine: str = ENGINE,
    batch: int = BATCH,
    shard: int = SHARD,
) -> float:
    """End-to-end files/s (actor start-up included); the rate once the actors run goes to STEADY."""
    from deepsynth.scale.ocr import ocr_on_ray
    from deepsynth.scale.runtime import RayOptions

    opts = RayOptions(workers=workers, cpus_per_worker=0.5, batch_size=batch, shard_size=shard)
    done: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    stats = ocr_on_ray(engine, files, out, opts=opts, engine_kwargs=ENGINE_KWARGS, progress=False,
                       on_shard=lambda _i, recs: done.append((time.perf_counter(), len(recs))))  # fmt: skip
    rate = len(files) / (time.perf_counter() - t0)
    assert stats.new == len(files) and not stats.failures, stats.to_dict()
    if workers in STEADY and len(done) > 2:
        STEADY[workers].append(sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0]))
    return rate


def _med_range(xs: list[float]) -> list[float] | None:
    """[median, min, max] of per-round ratios."""
    return [round(statistics.median(xs), 3), round(min(xs), 3), round(max(xs), 3)] if xs else None


def _fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(path.name + ".shards"), ignore_errors=True)
    return path


class NumberedFiles(Sequence):
    """``folder/0000000.png`` ... as a sequence that makes each path on demand (holds no list of paths)."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.folder / f"{i:07d}.png"


def _linked_inputs(sources: list[Path], n: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for i in range(n):
        f = folder / f"{i:07d}.png"
        os.link(sources[i % len(sources)], f)
        files.append(f)
    return files


def _throughput(files: list[Path], what: str) -> dict:
    """Interleaved rounds of in-process, Ray with 1 and with 2 workers over the same files."""
    import ray

    work = files[0].parent.parent
    rounds = []
    for _ in range(ROUNDS):
        rates = {
            "in_process": _in_process(files, _fresh(work / "a.jsonl")),
            "ray_1_worker": _on_ray(files, _fresh(work / "b.jsonl"), 1),
            "ray_2_workers": _on_ray(files, _fresh(work / "c.jsonl"), 2),
        }
        rounds.append(rates)
        print(json.dumps({k: round(v, 2) for k, v in rates.items()}), flush=True)
    one = [r["ray_1_worker"] / r["in_process"] for r in rounds]
    two = [r["ray_2_workers"] / r["ray_1_worker"] for r in rounds]
    steady_one = [s / r["in_process"] for s, r in zip(STEADY[1], rounds, strict=False)]
    steady_two = [b / a for a, b in zip(STEADY[1], STEADY[2], strict=False)]
    return {
        "engine": f"{ENGINE} (1 onnxruntime thread per engine), {FILES} {what}, batch {BATCH}",
        "ray": f"{ray.__version__}, local runtime num_cpus=2, 0.5 CPU per actor",
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "statistic": "median over interleaved rounds of the per-round ratio (range in brackets)",
        "ray_1_worker_vs_in_process": _med_range(one),
        "ray_2_vs_1_workers": _med_range(two),
        "steady_state": "files/s between the first and the last finished shard (actors already running)",
        "steady_ray_1_worker_vs_in_process": _med_range(steady_one),
        "steady_ray_2_vs_1_workers": _med_range(steady_two),
        "goals": {"ray_1_worker_vs_in_process": ">= 0.9", "ray_2_vs_1_workers": ">= 1.6 (2 free cores)"},
    }


def _driver_memory(images: list[Path], work: Path) -> dict:
    """Peak driver RSS of ``ocr --ray`` (2 workers) over ROWS_SMALL and ROWS_BIG files.

    The files are hard links to 8 real word crops (64 px of 8 lines; a file system allows ~65k links per file),
    read by the line engine whatever BENCH_RAY_INPUTS says (memory depends on the number of rows, not the engine).
    """
    from PIL import Image

    from deepsynth.scale.runtime import RayOptions

    words = []
    for i, path in enumerate(images[:8]):
        words.append(work / f"word{i}.png")
        with Image.open(path) as line:
            line.crop((0, 0, min(64, line.width), line.height)).save(words[-1])
    peaks = {}
    for n in (ROWS_SMALL, ROWS_BIG):
        _linked_inputs(words, n, work / f"rows{n}")
        many = NumberedFiles(work / f"rows{n}", n)  # a list of 100k Paths alone is ~38 MB
        with PeakRSS() as rss:
            # the line engine, whatever BENCH_RAY_INPUTS says
            _on_ray(many, _fresh(work / f"rows{n}.jsonl"), 2, engine="rapidocr", batch=8, shard=MEM_SHARD)
        peaks[n] = rss.peak
        shutil.rmtree(work / f"rows{n}", ignore_errors=True)
    return {
        "driver_peak_rss_mb": {str(n): round(v / 2**20, 1) for n, v in peaks.items()},
        "driver_rss_big_vs_small": round(peaks[ROWS_BIG] / peaks[ROWS_SMALL], 3),
        "goal_rss": "within 10% (<= 1.10)",
        "setup": f"rapidocr (line mode), 2 workers, batch 8, shard {MEM_SHARD}, window {RayOptions().window} shards; "
        "inputs: a sequence making each path on demand",
    }


def main() -> dict:
    import ray

    from deepsynth.scale.runtime import init_local

    root = DATA / "tapuscorpus_fr"
    if not root.is_dir():
        return {"skipped": f"no data at {DATA}"}
    rows = [json.loads(line) for line in (root / "manifest.jsonl").open()]
    images = [root / r["image"] for r in rows if not r.get("has_untranscribed")]
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    init_local(num_cpus=2, include_dashboard=False)
    try:
        if INPUTS == "pages":
            pages = sorted((DATA / "fondue_en_print20" / "images" / "pages").glob("*.png"))
            files, what = _linked_inputs(pages, FILES, work / "pages"), "fondue_en_print20 pages (2550x3300)"
        else:
            files, what = _linked_inputs(images[:FILES], FILES, work / "lines"), "tapuscorpus_fr lines"
        result = _throughput(files, what) if ROUNDS else {}
        if ROWS_BIG:
            result |= _driver_memory(images, work)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
