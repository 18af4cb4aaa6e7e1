"""``--ray``: eval / ocr / data prepare as Ray Data pipelines on a real local Ray runtime, compared with the
in-process commands on real lines from ../shared/data (RapidOCR, which reads each line the same whatever the
batch), plus resume per shard, bad files and a worker process killed mid-job."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="needs the .[scale] extra (ray)")

from deepsynth.cli.main import app  # noqa: E402
from deepsynth.evaluation.metrics import GROUP_KEYS  # noqa: E402
from deepsynth.scale.runtime import init_local  # noqa: E402
from deepsynth.scale.shards import MANIFEST, ShardStore, ShardStoreError  # noqa: E402

runner = CliRunner()
SET = "gt4histocr_dta19_lines"
# every per-group table (per_language, per_subset, per_doc_type) must match too
METRIC_KEYS = ("n", "cer", "wer", "ned", "exact_match", "cer_ci", "wer_ci", *(f"per_{k}" for k in GROUP_KEYS))


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime (head + worker processes on loopback) shared by every test here."""
    for attempt in range(3):  # Ray gives its raylet 30 s to start; a saturated machine can take longer
        try:
            init_local(num_cpus=2, include_dashboard=False)
            break
        except Exception as exc:
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
    yield
    ray.shutdown()


def run_ok(args: list[str], code: int = 0) -> str:
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def without_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "seconds"}


def assert_same_metrics(a: dict, b: dict) -> None:
    for key in METRIC_KEYS:
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True) or key in (
            "cer_ci",
            "wer_ci",
        ), key
    for key in ("cer", "wer", "ned", "exact_match"):
        assert abs(a[key] - b[key]) <= 1e-12
    for key in ("cer_ci", "wer_ci"):
        assert max(abs(x - y) for x, y in zip(a[key], b[key], strict=True)) <= 1e-12


def printed_workers(out: str) -> dict[str, tuple[int, Counter]]:
    """{worker: (pages, failures by kind)} from the `ray worker ...` lines of a --ray summary."""
    workers = {}
    for name, pages, failed in re.findall(
        r"^ray worker (\S+): (\d+) pages in [\d.]+ s(?:; failed: (.*))?$", out, re.M
    ):
        kinds = Counter({k: int(n) for k, n in (f.rsplit(" ", 1) for f in failed.split(", ") if f)})
        workers[name] = (int(pages), kinds)
    return workers


def eval_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "-e", "rapidocr", "-d", f"set={data}", "-b", "4", "-o", str(out), "--no-progress",
            "--bootstrap", "200", *extra]  # fmt: skip


RAY_POOL = ["--ray", "local", "--workers", "2", "--cpus-per-worker", "0.5", "--shard-size", "4"]


def test_eval_ray_same_predictions_and_metrics_then_resumes_per_shard(
    ray_runtime, hostile_manifest, tmp_path
):
    local, dist = tmp_path / "local", tmp_path / "ray"
    run_ok(eval_args(hostile_manifest, local))
    out = run_ok(eval_args(hostile_manifest, dist, *RAY_POOL, "--window", "2"))  # 3 shards: 2 Ray Data runs
    assert "ray: 11 new, 0 resumed of 11" in out and "failed: unreadable_image 1" in out
    a, b = (lines(d / "predictions.jsonl") for d in (local, dist))
    assert [without_timing(r) for r in a] == [without_timing(r) for r in b]
    assert [r["id"] for r in b if r.get("error")] == ["twice"]  # the corrupt image: an error record
    assert b[0]["doc_type"] == "fraktur_book"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (local, dist))
    assert ma["engine"] == mb["engine"] and mb["ray"]["new"] == 11 and mb["n"] == 10
    assert_same_metrics(ma, mb)
    workers = mb["ray"]["workers"]  # per engine actor, from the rows the driver kept
    assert sum(w["pages"] for w in workers.values()) == 10 and all(w["seconds"] > 0 for w in workers.values())
    assert sum((Counter(w["failures_by_kind"]) for w in workers.values()), Counter()) == {
        "unreadable_image": 1
    }
    assert printed_workers(out) == {
        k: (w["pages"], Counter(w["failures_by_kind"])) for k, w in workers.items()
    }
    types = mb["per_doc_type"]  # a manifest's doc_type, else the subset
    assert types["fraktur_book"]["n"] == 1 and types["letter"]["n"] == 2 and len(types) >= 3, types
    assert ma["unreadable"] == mb["unreadable"] and (dist / "report.html").is_file()

    # a crash after shard 1 was written but before it was listed: only that shard runs again
    manifest = dist / "shards" / MANIFEST
    entries = manifest.read_text().splitlines()
    manifest.write_text("\n".join(e for e in entries if json.loads(e)["shard"] != 1) + "\n")
    out = run_ok(eval_args(hostile_manifest, dist, *RAY_POOL))
    assert "ray: 4 new, 7 resumed of 11" in out
    assert [without_timing(r) for r in lines(dist / "predictions.jsonl")] == [without_timing(r) for r in a]
    assert_same_metrics(ma, json.loads((dist / "metrics.json").read_text()))

    # another job into the same directory is refused, as is an in-process run directory
    out = runner.invoke(app, eval_args(hostile_manifest, dist, "--limit", "5", *RAY_POOL))
    assert out.exit_code == 2 and "another job" in out.output
    out = runner.invoke(app, eval_args(hostile_manifest, local, *RAY_POOL))
    assert out.exit_code == 2 and "in-process run" in out.output


def test_shard_store_ignores_altered_or_torn_shards(tmp_path):
    store = ShardStore(tmp_path, {"command": "t"})
    store.write(0, [{"a": 1}, {"a": 2}])
    store.write(1, [{"a": 3}])
    with pytest.raises(ShardStoreError, match="already complete"):
        store.write(1, [{"a": 3}])
    (tmp_path / "part-000001.jsonl").write_text('{"a": 4}\n')  # altered after listing
    with (tmp_path / MANIFEST).open("a") as fh:
        fh.write('{"shard": 2, "rec')  # torn last line
    again = ShardStore(tmp_path, {"command": "t"})
    assert again.done == {0: 2}
    assert again.merge(tmp_path / "all.jsonl") == 2 and lines(tmp_path / "all.jsonl") == [{"a": 1}, {"a": 2}]
    with pytest.raises(ShardStoreError, match="another job"):
        ShardStore(tmp_path, {"command": "other"})


def test_worker_stats_sum_kept_rows_and_print_one_line_per_worker():
    from deepsynth.scale.metrics import WorkerStats
    from deepsynth.scale.pipeline import JobStats

    stats = JobStats(workers={"aa": WorkerStats(), "bb": WorkerStats()})
    rows = [("aa", 0.5, None), ("aa", 0.5, "invalid_image"), ("bb", 1.0, None), ("aa", 0.25, None)]
    for worker, seconds, failure in rows:
        stats.workers[worker].add({"worker": worker, "worker_seconds": seconds, "failure": failure})
    assert stats.to_dict()["workers"] == {
        "aa": {
            "pages": 2,
            "failures_by_kind": {"invalid_image": 1},
            "seconds": 1.25,
            "pages_per_second": 1.6,
        },
        "bb": {"pages": 1, "failures_by_kind": {}, "seconds": 1.0, "pages_per_second": 1.0},
    }
    out = "\n".join(f"ray {line}" for line in stats.worker_lines())
    assert printed_workers(out) == {"aa": (2, Counter(invalid_image=1)), "bb": (1, Counter())}
    assert stats.worker_lines(most=1) == [  # many windows, many actors: one line
        "2 engine actors: 3 pages in 2.2 busy s; pages per actor 1-2-2 (min-median-max); failed: invalid_image 1"
    ]


@pytest.fixture
def ocr_inputs(shared_data: Path, tmp_path: Path) -> Path:
    """12 real line images, a 2-page PDF of two of them, a corrupt PNG, a PNG cut short after its header
    (Ray: caught when the actor decodes it) and an empty file."""
    from PIL import Image

    root = tmp_path / "in"
    root.mkdir()
    images = sorted((shared_data / SET / "images" / "lines").glob("*.png"))[:12]
    for p in images:
        shutil.copy(p, root / p.name)
    pages = [Image.open(p).convert("RGB") for p in images[:2]]
    pages[0].save(root / "two_pages.pdf", save_all=True, append_images=pages[1:], resolution=72)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    data = images[0].read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    return root


def test_ocr_ray_same_records_bad_files_are_records(ray_runtime, ocr_inputs, tmp_path):
    local, dist = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    base = ["ocr", str(ocr_inputs), "--model", "rapidocr", "-b", "4", "--no-progress", "--dpi", "72"]
    run_ok([*base, "--out", str(local)], code=1)  # two bad files: exit 1, as in-process
    out = run_ok([*base, "--out", str(dist), "--md-dir", str(tmp_path / "md"), *RAY_POOL], code=1)
    assert "failed: invalid_image 2, empty_file 1" in out
    a = {r["input"]: without_timing(r) for r in lines(local)}
    b = [without_timing(r) for r in lines(dist)]
    assert len(b) == len(a) == 16 and {r["input"] for r in b} == set(a)
    assert [r["input"] for r in b] == sorted(a)  # input order
    assert all(r == a[r["input"]] for r in b)
    pdf = next(r for r in b if r["input"].endswith(".pdf"))
    assert pdf["n_pages"] == 2 and "<!-- page 2 -->" in (tmp_path / "md" / "two_pages.md").read_text()
    bad = ("corrupt", "empty", "truncated")
    assert {r["status"] for r in b if any(k in r["input"] for k in bad)} == {"error"}
    assert "truncated.png" in next(r["error"] for r in b if "truncated" in r["input"])
    workers = printed_workers(out)  # 12 images + 2 PDF pages read, 3 bad files, over the engine actors
    assert workers and sum(pages for pages, _ in workers.values()) == 14
    assert sum((kinds for _, kinds in workers.values()), Counter()) == {"empty_file": 1, "invalid_image": 2}


def test_ocr_ray_decode_tasks_ship_image_paths_and_render_pdfs(ocr_inputs):
    """Image files leave the CPU task as their path only (the actor reads and decodes them); PDF pages as RGB
    pixels; files whose header does not open are error rows already."""
    import pyarrow as pa
    from PIL import Image

    from deepsynth.inference.batch_files import OFFLINE_LIMITS
    from deepsynth.scale.ocr import FILE_SCHEMA, decode_files

    names = ["two_pages.pdf", "corrupt.png", "empty.jpg", "truncated.png", "missing.png", "two_frames.tif"]
    line = next(p for p in sorted(ocr_inputs.glob("*.png")) if p.name not in names)
    frames = [Image.open(line).convert("RGB")] * 2
    frames[0].save(ocr_inputs / "two_frames.tif", save_all=True, append_images=frames[1:])
    paths = [line, *(ocr_inputs / n for n in names)]
    table = pa.Table.from_pylist([{"shard": 0, "unit": i, "path": str(p)} for i, p in enumerate(paths)],
                                 schema=FILE_SCHEMA)  # fmt: skip
    rows = decode_files(table, asdict(OFFLINE_LIMITS)).to_pylist()
    assert [(r["unit"], r["part"], r["n_parts"]) for r in rows] == [(0, 0, 1), (1, 0, 2), (1, 1, 2), (2, 0, 1),
                                                                     (3, 0, 1), (4, 0, 1), (5, 0, 1), (6, 0, 2),
                                                                     (6, 1, 2)]  # fmt: skip
    first, pdf, bad = rows[0], rows[1:3], rows[3:5]
    assert first["encoded"] and first["pixels"] == b"" and first["error"] is None
    assert first["path"] == str(line)  # the actor reads the file itself
    assert not any(r["encoded"] for r in pdf) and all(
        len(r["pixels"]) == 3 * r["width"] * r["height"] for r in pdf
    )
    assert [r["kind"] for r in bad] == ["invalid_image", "empty_file"]
    assert rows[5]["encoded"] and rows[5]["error"] is None  # its header opens: the actor finds it corrupt
    assert rows[6]["kind"] == "unreadable_file" and "missing.png" in rows[6]["error"]
    assert not any(r["encoded"] for r in rows[7:]) and [r["page"] for r in rows[7:]] == [1, 2]  # TIFF frames


def scrape_workers(port: int, names: set[str]) -> dict[str, tuple[int, dict[str, int]]]:
    """{worker: (pages, failures by kind)} of the DeepSynth counters Ray's metrics agent serves."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    got: dict[str, tuple[int, dict[str, int]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            worker = s.labels.get("worker")
            if worker not in names:
                continue
            pages, kinds = got.setdefault(worker, (0, {}))
            if s.name == "ray_deepsynth_worker_pages_total":
                got[worker] = (int(s.value), kinds)
            elif s.name == "ray_deepsynth_worker_failures_total":
                kinds[s.labels["kind"]] = int(s.value)
    return got


def test_worker_metrics_reach_prometheus_through_rays_metrics_agent(ray_runtime, ocr_inputs, tmp_path):
    import time

    from deepsynth.inference.batch_files import expand_paths
    from deepsynth.scale.ocr import ocr_on_ray
    from deepsynth.scale.runtime import RayOptions

    port = ray.nodes()[0]["MetricsExportPort"]
    if not port or port <= 0:
        pytest.skip(
            "no Ray metrics agent here (it needs ray[default]); the summary's per-worker counts are tested"
        )
    opts = RayOptions(workers=2, cpus_per_worker=0.5, batch_size=4, shard_size=4)
    stats = ocr_on_ray(
        "rapidocr", expand_paths([str(ocr_inputs)]), tmp_path / "m.jsonl", opts=opts, progress=False
    )
    want = {name: (w.pages, dict(w.failures)) for name, w in stats.workers.items()}
    assert sum(pages for pages, _ in want.values()) == 14
    deadline = (
        time.monotonic() + 90
    )  # workers report to the agent every few seconds (metrics_report_interval_ms)
    while (got := scrape_workers(port, set(want))) != want and time.monotonic() < deadline:
        time.sleep(2)
    assert got == want  # the same per-worker pages and failures by kind as the summary (no actor restarted)


def _actor_pids(name: str) -> list[int]:
    """Processes of this test's own Ray runtime (descendants of this process) running actor ``name``."""
    import psutil

    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if name in " ".join(proc.cmdline()):
                pids.append(proc.pid)
    return pids


class CountingFiles(Sequence):
    """A file list that counts how far each pass over it (``for p in files``) got."""

    def __init__(self, files: list[Path]):
        self.files, self.passes = files, []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        return self.files[i]

    def __iter__(self):  # noqa: ANN204
        self.passes.append(0)
        for f in self.files:
            self.passes[-1] += 1
            yield f


def test_ocr_ray_reads_its_inputs_a_window_at_a_time(ray_runtime, ocr_inputs, tmp_path):
    """The driver cuts shards from its inputs one window at a time: when the first shard is written, the
    pass that feeds the shards has read one window of files, not all of them; records stay exactly once."""
    from deepsynth.inference.batch_files import expand_paths, ocr_files
    from deepsynth.inference.service import OCRService
    from deepsynth.observability import Observability
    from deepsynth.scale.ocr import ocr_on_ray
    from deepsynth.scale.runtime import RayOptions

    files = CountingFiles(expand_paths([str(ocr_inputs)]))
    reference = tmp_path / "ref.jsonl"
    service = OCRService("rapidocr", obs=Observability("rapidocr", metrics=False))
    ocr_files(service.recognize, files.files, reference, model_id="rapidocr", progress=False)
    opts = RayOptions(workers=1, cpus_per_worker=0.5, batch_size=4, shard_size=4, window=2)
    read_when_written: list[int] = []
    out = tmp_path / "windows.jsonl"
    stats = ocr_on_ray("rapidocr", files, out, opts=opts, progress=False,
                       on_shard=lambda _i, _r: read_when_written.append(files.passes[-1]))  # fmt: skip
    assert stats.new == len(files) == 16
    assert read_when_written[0] == 8  # one window: 2 shards of 4 files
    assert read_when_written[-1] == 16 and len(read_when_written) == 4
    got = [without_timing(r) for r in lines(out)]
    expected = {r["input"]: without_timing(r) for r in lines(reference)}
    assert got == [expected[str(f)] for f in files.files]  # each file exactly once, in order


@pytest.mark.slow
def test_worker_killed_mid_job_loses_and_duplicates_nothing(ray_runtime, ocr_inputs, tmp_path):
    from deepsynth.inference.batch_files import expand_paths, ocr_files
    from deepsynth.inference.service import OCRService
    from deepsynth.observability import Observability
    from deepsynth.scale.ocr import ocr_on_ray
    from deepsynth.scale.runtime import RayOptions

    files = expand_paths([str(ocr_inputs)])
    reference = tmp_path / "ref.jsonl"
    service = OCRService("rapidocr", obs=Observability("rapidocr", metrics=False))
    ocr_files(service.recognize, files, reference, model_id="rapidocr", progress=False)
    opts = RayOptions(workers=2, cpus_per_worker=0.5, batch_size=1, shard_size=1)
    killed: list[int] = []

    def kill_one(index: int, records: list[dict]) -> None:
        if not killed:
            pids = _actor_pids("OCRWorker")
            assert pids, "no OCRWorker actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    out = tmp_path / "killed.jsonl"
    stats = ocr_on_ray("rapidocr", files, out, opts=opts, progress=False, on_shard=kill_one)
    assert killed and stats.new == len(files)
    # per-worker counts come from the rows kept: a batch run again on the restarted actor is not counted twice
    assert sum(w.pages for w in stats.workers.values()) == 14
    assert sum(sum(w.failures.values()) for w in stats.workers.values()) == 3
    got = [without_timing(r) for r in lines(out)]
    assert [r["input"] for r in got] == [str(f) for f in files]  # each file exactly once, in order
    expected = {r["input"]: without_timing(r) for r in lines(reference)}
    assert got == [expected[str(f)] for f in files]


@pytest.fixture
def hostile_manifest(shared_data: Path, tmp_path: Path) -> Path:
    """10 real lines plus: a corrupt image whose id reappears later with a good image (the second copy is
    kept, as in-process), a missing image, an empty text, an invalid JSON line and a duplicate good id."""
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    rows = [json.loads(x) for x in (shared_data / SET / "manifest.jsonl").read_text().splitlines()[:10]]
    rows[0]["doc_type"] = "fraktur_book"  # a meta key the records carry (the others: their subset)
    rows[3]["doc_type"] = rows[6]["doc_type"] = "letter"
    for r in rows:
        shutil.copy(shared_data / SET / r["image"], root / "images" / Path(r["image"]).name)
        r["image"] = "images/" + Path(r["image"]).name
    (root / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 20)
    extra = [
        {"id": "twice", "image": "images/bad.png", "text": "corrupt first"},
        {"id": "gone", "image": "images/missing.png", "text": "no file"},
        {"id": "blank", "image": rows[0]["image"], "text": "  "},
        {"id": "twice", "image": rows[1]["image"], "text": "good second"},
        {"id": rows[2]["id"], "image": rows[2]["image"], "text": "duplicate of a good id"},
    ]
    lines_out = [json.dumps(r, ensure_ascii=False) for r in rows[:5] + extra[:3]]
    lines_out += ["{not json", *(json.dumps(r, ensure_ascii=False) for r in rows[5:] + extra[3:])]
    (root / "manifest.jsonl").write_text("\n".join(lines_out) + "\n", encoding="utf-8")
    return root


def test_data_prepare_ray_same_kept_skipped_and_report(ray_runtime, hostile_manifest, tmp_path):
    local, dist = tmp_path / "local", tmp_path / "ray"
    base = ["data", "prepare", f"set={hostile_manifest}", "--to", "jsonl"]
    run_ok([*base, "--out", str(local)])
    out = run_ok([*base, "--out", str(dist), "--ray", "local", "--ray-shard-size", "4"])
    assert "ray: " in out and "failed: corrupt_image 1" in out
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (local, dist))
    for key in ("seconds", "out_dir"):
        ra.pop(key), rb.pop(key)
    assert ra == rb
    assert ra["n_written"] == 11 and {s["id"] for s in ra["skipped"]} >= {"twice", "gone", "blank"}
    kept_a, kept_b = (sorted(p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != "report.json")
                      for d in (local, dist))  # fmt: skip
    assert kept_a == kept_b
    assert not (tmp_path / "ray.ray-check").exists()


def test_local_runtime_listens_on_loopback_only(ray_runtime):
    """Every socket the local runtime's processes listen on (GCS, raylet, workers, agents) is on 127.0.0.1."""
    psutil = pytest.importorskip("psutil")

    @ray.remote
    def worker_pid() -> int:
        return os.getpid()

    ray.get(worker_pid.remote())  # a worker process exists
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    assert listening, "no listening socket found for the Ray processes"
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    exposed = [
        (c.laddr.ip, c.laddr.port) for c in listening if c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1")
    ]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
