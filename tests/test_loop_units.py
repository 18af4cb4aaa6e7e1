"""The loop's parts on their own: holdout decided once, trigger reasons, gate rule, inbox errors, MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepsynth.config import ConfigError
from deepsynth.data import Sample, SampleFilter, open_sources
from deepsynth.loop import gate, trigger
from deepsynth.loop.config import GateSettings, LoopConfig, TriggerSettings, load_loop_config
from deepsynth.loop.inbox import deliver, scan
from deepsynth.loop.registry import CHAMPION, ModelRegistry, RegistryError
from deepsynth.loop.state import LoopState, is_holdout, load_state, save_state

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "loop" / "loop.yaml"


def _line(i: int, page: int, doc_type: str = "receipts") -> Sample:
    return Sample(
        f"{doc_type}-{page}-{i}", "text", meta={"doc_type": doc_type, "page_id": f"{doc_type}-p{page}"}
    )


def test_holdout_is_per_page_decided_once_and_never_recomputed(tmp_path):
    state = LoopState()
    for page in range(200):
        for i in range(3):
            state.add_sample(_line(i, page), "page_id", 0.15, seed=0)
    t = state.types["receipts"]
    assert t.labelled == 600 and len(t.holdout_groups) == 200
    share = sum(t.holdout_groups.values()) / 200
    assert 0.08 < share < 0.22  # ~15% of the pages
    for page in range(200):  # a page and its lines are on one side
        assert len({t.samples[f"receipts-{page}-{i}"] for i in range(3)}) == 1
    save_state(tmp_path, state)
    again = load_state(tmp_path)
    # a later config with another seed/fraction must not move pages already seen
    for page in range(200):
        again.add_sample(_line(9, page), "page_id", 0.9, seed=123)
    assert {p: v for p, v in again.types["receipts"].holdout_groups.items()} == t.holdout_groups
    assert again.types["receipts"].samples["receipts-7-9"] == t.holdout_groups["receipts-p7"]
    assert again.add_sample(_line(0, 0), "page_id", 0.15, 0) == t.samples["receipts-0-0"]  # counted once
    assert again.types["receipts"].labelled == 800
    assert is_holdout("receipts", "receipts-p1", 0.15, 0) == t.holdout_groups["receipts-p1"]


def test_trigger_threshold_interval_and_mix():
    state = LoopState()
    for i in range(60):
        state.add_sample(_line(i, i, "receipts"), "page_id", 0.15, 0)
    for i in range(10):
        state.add_sample(_line(i, i, "invoices"), "page_id", 0.15, 0)
    cfg = TriggerSettings(min_new=50, min_interval_minutes=60)
    d = {x.doc_type: x for x in trigger.decide(state, cfg, now=10_000)}
    assert d["receipts"].fire and not d["invoices"].fire
    assert d["invoices"].reason == "10 new labelled documents < min_new 50"
    state.types["receipts"].last_run_at = 10_000 - 600
    d = {x.doc_type: x for x in trigger.decide(state, cfg, now=10_000)}
    assert not d["receipts"].fire and "10 min ago" in d["receipts"].reason
    mix = TriggerSettings(min_new=50, min_interval_minutes=0, target_mix={"receipts": 0.5, "invoices": 0.5})
    d = {x.doc_type: x for x in trigger.decide(state, mix, now=10_000)}
    assert (
        not d["receipts"].fire
        and "invoices is 14% of the labelled documents, target 50%" in d["receipts"].reason
    )
    ok = TriggerSettings(min_new=50, min_interval_minutes=0, target_mix={"receipts": 0.8, "invoices": 0.2})
    assert {x.doc_type for x in trigger.decide(state, ok, now=10_000) if x.fire} == {"receipts"}
    with pytest.raises(ConfigError, match="sum to 1"):
        TriggerSettings(target_mix={"a": 0.5})
    with pytest.raises(ConfigError, match="mode"):
        TriggerSettings(mode="both")


def test_trigger_counts_documents_and_falls_back_to_samples(tmp_path):
    """Lines of one page are one document; a line without a page_id is a document of its own."""
    state = LoopState()
    for page in range(20):  # 20 pages x 5 lines
        for i in range(5):
            state.add_sample(_line(i, page), "page_id", 0.15, 0)
    for i in range(30):  # 30 lines without a page id
        state.add_sample(Sample(f"loose-{i}", "t", meta={"doc_type": "receipts"}), "page_id", 0.15, 0)
    state.add_sample(_line(0, 3), "page_id", 0.15, 0)  # seen again: counted once
    t = state.types["receipts"]
    assert (t.labelled, t.n_documents, t.new_documents) == (130, 50, 50)
    d = trigger.decide(state, TriggerSettings(min_new=51, min_interval_minutes=0), now=0)[0]
    assert not d.fire and d.reason == "50 new labelled documents < min_new 51"
    assert trigger.decide(state, TriggerSettings(min_new=50, min_interval_minutes=0), now=0)[0].fire
    t.documents_at_last_run, t.labelled_at_last_run = 50, 130  # as a finished run leaves it
    for i in range(5):  # five more lines of a known page: new samples, no new document
        state.add_sample(_line(10 + i, 7), "page_id", 0.15, 0)
    assert (t.new_since_last_run, t.new_documents) == (5, 0)
    save_state(tmp_path, state)
    assert load_state(tmp_path).types["receipts"].documents == t.documents
    # a state.json written before documents were counted: every sample is a document, nothing new
    raw = json.loads((tmp_path / "state.json").read_text())
    for ts in raw["types"].values():
        del ts["documents"], ts["documents_at_last_run"]
    (tmp_path / "state.json").write_text(json.dumps(raw))
    legacy = load_state(tmp_path).types["receipts"]
    assert (legacy.n_documents, legacy.documents_at_last_run, legacy.new_documents) == (135, 130, 5)


def test_gate_rule():
    g = GateSettings(tolerance_cer_points=0.5)
    better = gate.TypeResult("a", 50, 0.10, 0.05, -0.05, -0.07, -0.03)
    flat = gate.TypeResult("b", 50, 0.10, 0.101, 0.001, -0.002, 0.004)
    worse = gate.TypeResult("b", 50, 0.10, 0.12, 0.02, 0.01, 0.03)
    assert gate.decide([better, flat], ["a"], ["a", "b"], g)[0]
    ok, reasons = gate.decide([better, worse], ["a"], ["a", "b"], g)
    assert not ok and any("b: worse beyond tolerance" in r and "+3.00 > +0.5" in r for r in reasons)
    assert gate.decide([better, worse], ["a"], ["a"], g)[0]  # b is served by its own champion
    ok, reasons = gate.decide([flat], ["b"], ["b"], g)
    assert not ok and "does not exclude 0" in reasons[0]
    assert not gate.decide([better], ["c"], ["c"], g)[0]  # triggering type without a holdout
    with pytest.raises(ConfigError, match="gate.guard"):
        GateSettings(guard="some")


def test_inbox_reports_bad_entries_and_counts_new_ones_once(shared_data, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    fraktur = list(open_sources([str(shared_data / "gt4histocr_dta19_lines")], filter=SampleFilter(limit=5)))
    deliver(inbox, "01-fraktur", fraktur, "parquet")
    (inbox / "02-notes.txt").write_text("not a dataset")
    broken = inbox / "03-broken"
    broken.mkdir()
    (broken / "manifest.jsonl").write_text("{not json\n")
    (inbox / "04-upload.part").write_text("still arriving")
    state = LoopState()
    found = scan(inbox, state, "page_id", 0.15, 0)
    assert set(found.read) == {"01-fraktur"} and sum(found.read["01-fraktur"].values()) == 5
    assert set(found.bad) == {"02-notes.txt", "03-broken"}
    assert (
        "invalid_json" in found.bad["03-broken"] and "unknown source file type" in found.bad["02-notes.txt"]
    )
    assert scan(inbox, state, "page_id", 0.15, 0).read == {}  # unchanged entries are not read twice
    assert sum(t.labelled for t in state.types.values()) == 5


def test_registry_versions_aliases_promote_rollback(tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"v")
    kw = {"metrics": {"holdout_cer.a": 0.1}, "params": {"types": "a"}, "files": {"config.json": {"lr": 1}}}
    v1 = reg.register("m-a", model, run_id="r1", **kw)
    assert reg.register("m-a", model, run_id="r1", **kw) == v1  # a resumed run does not register twice
    v2 = reg.register("m-a", model, run_id="r2", **kw)
    assert (v1, v2) == ("1", "2") and reg.version_by_alias("m-a", CHAMPION) is None
    reg.promote("m-a", v1)
    reg.promote("m-a", v2)
    reg.promote("m-a", v2)
    assert reg.version_by_alias("m-a", CHAMPION) == "2" and reg.history("m-a") == ["1", "2"]
    info = reg.version_info("m-a", "2")
    assert (
        info["metrics"]["holdout_cer.a"] == pytest.approx(0.1) and info["tags"]["deepsynth.loop_run"] == "r2"
    )
    assert (reg.download("m-a", "2", tmp_path / "dl") / "weights.bin").read_bytes() == b"v"
    assert reg.rollback("m-a") == "1" and reg.version_by_alias("m-a", CHAMPION) == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("m-a")
    with pytest.raises(RegistryError, match="no version '9'"):
        reg.promote("m-a", "9")


def test_cli_promote_and_rollback(tmp_path):
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = ModelRegistry(uri, tmp_path / "artifacts")
    (tmp_path / "m").mkdir()
    for run in ("r1", "r2"):
        reg.register("m", tmp_path / "m", run_id=run, metrics={}, params={}, files={})
    runner = CliRunner()
    for version in ("1", "2"):
        res = runner.invoke(app, ["loop", "promote", "m", version, "--tracking-uri", uri])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["loop", "rollback", "m", "--tracking-uri", uri])
    assert res.exit_code == 0 and "champion -> v1" in res.output
    assert reg.version_by_alias("m", CHAMPION) == "1"
    res = runner.invoke(app, ["loop", "promote", "m", "7", "--tracking-uri", uri])
    assert res.exit_code == 2 and "no version '7'" in res.output


def test_example_config_is_the_documented_default():
    cfg = load_loop_config(EXAMPLE)
    assert cfg.trigger.min_new == 50 and cfg.trigger.mode == "specialise"
    assert cfg.trigger.target_mix == {"receipts": 0.4, "invoices": 0.3, "contracts": 0.3}
    assert cfg.trigger.mix_tolerance == 0.1 and cfg.gate.tolerance_cer_points == 0.5
    assert LoopConfig().model_name("hand written") == "deepsynth-ocr-hand_written"
    with pytest.raises(ConfigError, match="trigger.min_new"):
        load_loop_config(EXAMPLE, ["trigger.min_new=0"])


def test_lower_layers_never_import_the_loop():
    import ast

    import deepsynth

    root = Path(deepsynth.__file__).parent
    bad = []
    for layer in ("data", "models", "training", "evaluation", "inference", "observability", "scale"):
        for path in root.glob(f"{layer}/**/*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    mods = [node.module]
                bad += [f"{path.relative_to(root)}: {m}" for m in mods if m.startswith("deepsynth.loop")]
    assert not bad


def test_cli_names_a_bad_config(tmp_path):
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    res = CliRunner().invoke(app, ["loop", "status", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("trigger:\n  min_nwe: 5\n")
    res = CliRunner().invoke(app, ["loop", "run", str(bad)])
    assert res.exit_code == 2 and "trigger.min_nwe" in res.output
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"workdir: {tmp_path / 'w'}\ninbox: {tmp_path / 'in'}\n")
    res = CliRunner().invoke(app, ["loop", "status", str(empty)])
    assert res.exit_code == 0 and "no labelled data seen yet" in res.output
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a dataset")
    res = CliRunner().invoke(app, ["loop", "watch", str(empty), "--max-passes", "2", "--interval", "0"])
    assert res.exit_code == 0, res.output
    assert res.output.count("notes.txt: skipped") == 1  # reported once, not on every pass
    assert load_state(tmp_path / "w").entries["notes.txt"]["status"] == "bad"


def test_runs_started_in_the_same_second_get_their_own_record(tmp_path):
    from deepsynth.loop.runner import _start, load_record

    cfg = LoopConfig(workdir=str(tmp_path / "w"), inbox=str(tmp_path / "in"))
    state = LoopState()
    state.add_sample(_line(0, 0), "page_id", 0.15, 0)
    first = _start(cfg, state, ["receipts"], now=1_000.0)
    second = _start(cfg, state, ["receipts"], now=1_000.0)
    assert first["run_id"] != second["run_id"]
    assert load_record(cfg, first["run_id"])["stage"] == "started"
    assert load_state(cfg.workdir).pending == second["run_id"]
    assert second["labelled_at_start"] == {"receipts": 1} and second["model_name"] == "deepsynth-ocr-receipts"


def test_cli_watch_serves_metrics_and_names_a_busy_port(tmp_path):
    import socket

    from prometheus_client.parser import text_string_to_metric_families
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    cfg = tmp_path / "loop.yaml"
    cfg.write_text(f"name: shop\nworkdir: {tmp_path / 'w'}\ninbox: {tmp_path / 'in'}\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a dataset")
    args = ["loop", "watch", str(cfg), "--max-passes", "1", "--interval", "0", "--metrics-port"]
    res = CliRunner().invoke(app, [*args, "0"])
    assert res.exit_code == 0 and "loop metrics on http://127.0.0.1:" in res.output, res.output
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families((tmp_path / "w" / "metrics.prom").read_text())
               for s in fam.samples}  # fmt: skip
    assert samples[("deepsynth_loop_inbox_entries", (("loop", "shop"), ("status", "bad")))] == 1
    assert samples[("deepsynth_loop_pending_runs", (("loop", "shop"),))] == 0
    assert ("deepsynth_loop_last_pass_timestamp_seconds", (("loop", "shop"),)) in samples
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = CliRunner().invoke(app, [*args, str(busy.getsockname()[1])])
    assert res.exit_code == 2 and "--metrics-port" in res.output, res.output
