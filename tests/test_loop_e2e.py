"""The improvement loop end to end on real lines: Fraktur and typewriter sets arrive in batches as two document
types; the trigger fires only when a type crosses its threshold; the gate promotes a fine-tune of the shipped
PP-OCRv6 recogniser (backbone frozen, 12 steps: cheap on a shared CPU) that is better and rejects one trained
on shuffled labels (6 steps); bad inbox entries are reported and skipped; a pass killed mid-training leaves the
champion unchanged and the next pass resumes it. Slow (minutes of CPU): marked ``slow``."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.data import Sample, SampleFilter, open_sources
from deepsynth.loop.config import load_loop_config
from deepsynth.loop.inbox import deliver
from deepsynth.loop.registry import CHAMPION
from deepsynth.loop.runner import registry_for, run_once
from deepsynth.loop.state import is_holdout, load_state

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "loop" / "shared_sets.yaml"
pytestmark = pytest.mark.slow


def _lines(path: Path, doc_type: str, n: int) -> list[Sample]:
    """The ``n`` lines with the shortest texts (narrow crops: fast steps), typed ``doc_type``, ordered by id."""
    rows = [
        s
        for s in open_sources([str(path)], filter=SampleFilter(limit=400))
        if not s.meta.get("has_untranscribed")
    ]
    picked = sorted(rows, key=lambda s: (len(s.text), s.id))[:n]
    for s in picked:
        s.meta["doc_type"] = doc_type
    return sorted(picked, key=lambda s: s.id)


def _shuffled(samples: list[Sample]) -> list[Sample]:
    texts = [s.text for s in samples]
    random.Random(0).shuffle(texts)
    return [
        Sample(f"bad-{s.id}", t, image_loader=s.image_loader, meta=dict(s.meta))
        for s, t in zip(samples, texts, strict=True)
    ]


def _status(cfg_path: Path) -> dict[str, dict]:
    res = CliRunner().invoke(app, ["loop", "status", str(cfg_path), "--json"])
    assert res.exit_code == 0, res.output
    return {r["doc_type"]: r for r in json.loads(res.output)}


@pytest.fixture(scope="module")
def lines(shared_data) -> dict[str, list[Sample]]:
    """The real lines both tests use, read once: 250 Fraktur lines (no page ids) and 30 typewriter lines."""
    return {"fraktur": _lines(shared_data / "gt4histocr_dta19_lines", "fraktur", 250),
            "typewriter": _lines(shared_data / "tapuscorpus_fr", "typewriter", 30)}  # fmt: skip


def test_loop_end_to_end(lines, tmp_path):
    fraktur, typewriter = lines["fraktur"], lines["typewriter"]
    inbox, workdir = tmp_path / "inbox", tmp_path / "work"
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(inbox=str(inbox), workdir=str(workdir), holdout={"key": "id", "fraction": 0.2, "max_eval": 30},
               gate={"resamples": 500}, trigger={**raw["trigger"], "min_new": 40},
               overrides=["max_steps=12", "batch_size=8", "optim.lr=1e-3", "optim.warmup_ratio=0", "eval.times=null",
                          "model.freeze=[model.backbone]",
                          "eval.every_steps=0", "eval.at_start=false", "checkpoint.times=null",
                          "checkpoint.every_steps=0", "augment.p=0", "num_threads=1", "progress=false",
                          "trackers=[jsonl]", "data.group_by_length=false"])  # fmt: skip
    config = tmp_path / "loop.yaml"
    config.write_text(f"# deepsynth loop run {config}\n" + yaml.safe_dump(raw))
    cfg = load_loop_config(config)
    registry = registry_for(cfg)
    name = cfg.model_name("fraktur")
    log: list[str] = []

    # batch 1: below the threshold for both types; a bad file is reported and skipped
    deliver(inbox, "001", fraktur[:30] + typewriter, "jsonl")
    (inbox / "002-scan.pdf").write_bytes(b"%PDF-1.4 not a dataset")
    first = run_once(cfg, log=log.append)
    assert first.runs == [] and not any(d.fire for d in first.decisions)
    assert "unknown source file type" in first.scan.bad["002-scan.pdf"]
    assert any("002-scan.pdf: skipped" in line for line in log)
    status = _status(config)
    assert status["fraktur"]["reason"] == "30 new labelled documents < min_new 40"  # no page_id: one per line
    pages = len({s.meta["page_id"] for s in typewriter})  # typewriter lines carry their page: counted by page
    assert status["typewriter"]["labelled"] == 30 and status["typewriter"]["documents"] == pages < 30
    assert status["typewriter"]["reason"] == f"{pages} new labelled documents < min_new 40"
    assert status["fraktur"]["holdout"] == sum(is_holdout("fraktur", s.id, 0.2, 0) for s in fraktur[:30])

    # batch 2 (Parquet): Fraktur crosses the threshold, typewriter does not
    deliver(inbox, "003", fraktur[30:130], "parquet")
    second = run_once(cfg, log=log.append)
    decisions = {d.doc_type: d for d in second.decisions}
    assert decisions["fraktur"].fire and not decisions["typewriter"].fire
    (run,) = second.runs
    assert run["types"] == ["fraktur"] and run["stage"] == "done"
    results = {r["doc_type"]: r for r in run["gate"]["results"]}
    assert set(results) == {"fraktur", "typewriter"}  # every type's holdout
    assert run["decision"] == "promoted", run["gate"]
    assert results["fraktur"]["ci_high"] < 0
    assert registry.version_by_alias(name, CHAMPION) == run["version"] == "1"

    # batch 3: a mislabelled batch of training pages (labels shuffled) -> the candidate trained on it (6 steps
    # are enough to make it worse) is rejected by the gate and the champion stays
    mislabelled = [s for s in _shuffled(fraktur[130:200]) if not is_holdout("fraktur", s.id, 0.2, 0)]
    deliver(inbox, "004", mislabelled, "webdataset")
    third = run_once(dataclasses.replace(cfg, overrides=[*cfg.overrides, "max_steps=6"]), log=log.append)
    (bad,) = third.runs
    assert bad["decision"] == "rejected" and bad["version"] == "2" and bad["train"]["steps"] == 6
    assert registry.version_by_alias(name, CHAMPION) == "1"
    assert any("not better" in r or "worse beyond tolerance" in r for r in bad["gate"]["reasons"])
    worse = {r["doc_type"]: r for r in bad["gate"]["results"]}["fraktur"]
    assert worse["delta"] > 0, bad["gate"]
    # the champion v1 is the candidate run 1 scored: its holdout predictions were reused, not recomputed
    assert worse["cer_champion"] == results["fraktur"]["cer_candidate"]
    history = CliRunner().invoke(app, ["loop", "history", str(config)])
    assert history.exit_code == 0 and "rejected" in history.output and "change CI" in history.output

    # batch 4: the same ids again are counted once: nothing new, nothing runs
    deliver(inbox, "005", fraktur[:10], "jsonl")
    assert run_once(cfg, log=log.append).runs == []


def test_a_killed_pass_leaves_the_champion_and_resumes(lines, tmp_path):
    """`loop run` killed (SIGKILL) mid-training: the champion alias stays, the next pass resumes the same run from
    its checkpoint and finishes it. A tiny PP-OCRv6-architecture model keeps the steps cheap."""
    from deepsynth.models.ppocr.adapter import PPOCRAdapter

    fraktur = sorted(sorted(lines["fraktur"], key=lambda s: (len(s.text), s.id))[:60], key=lambda s: s.id)
    base = tmp_path / "base_model"
    PPOCRAdapter.tiny_random("".join(sorted({c for s in fraktur for c in s.text})), seed=0).save(base)
    inbox, workdir = tmp_path / "inbox", tmp_path / "work"
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(inbox=str(inbox), workdir=str(workdir), holdout={"key": "id", "fraction": 0.2, "max_eval": 10},
               gate={"resamples": 200}, trigger={**raw["trigger"], "min_new": 40},
               overrides=[f"model.path={base}", "max_steps=24", "batch_size=4", "eval.times=null",
                          "eval.every_steps=0", "eval.at_start=false", "checkpoint.times=null",
                          "checkpoint.every_steps=2", "checkpoint.keep_last=2", "augment.p=0", "num_threads=1",
                          "progress=false", "trackers=[jsonl]", "data.group_by_length=false"])  # fmt: skip
    config = tmp_path / "loop.yaml"
    config.write_text(f"# deepsynth loop run {config}\n" + yaml.safe_dump(raw))
    cfg = load_loop_config(config)
    registry = registry_for(cfg)
    name = cfg.model_name("fraktur")
    registry.register(name, base, run_id="seed", metrics={}, params={}, files={})
    registry.promote(name, "1")
    deliver(inbox, "001", fraktur, "jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = (tmp_path / "killed_pass.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "deepsynth.cli.main", "loop", "run", str(config)],
                            env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if list(workdir.glob("runs/*/train/checkpoints/step-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "killed_pass.log").read_text()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out.close()
    state = load_state(workdir)
    assert state.pending is not None and registry.version_by_alias(name, CHAMPION) == "1"
    log: list[str] = []
    resumed = run_once(cfg, log=log.append)
    assert resumed.runs[0]["run_id"] == state.pending and resumed.runs[0]["stage"] == "done"
    assert log[0] == f"resuming run {state.pending}"
    run_yaml = yaml.safe_load((workdir / "runs" / state.pending / "train" / "run.yaml").read_text())
    assert run_yaml["resumed_from"] and resumed.runs[0]["train"]["steps"] == 24
    assert load_state(workdir).pending is None
    assert registry.version_by_alias(name, CHAMPION) in ("1", resumed.runs[0]["version"])
