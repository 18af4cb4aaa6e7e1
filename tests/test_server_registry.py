"""Serving ``models:/NAME@ALIAS`` from a real MLflow Model Registry (SQLite in tmp_path): the server follows
the alias through `deepsynth loop promote` / `rollback` while clients keep sending requests over loopback
HTTP: zero errors, answers from the old version until the switch and from the new one after it."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from deepsynth.cli.main import app as cli
from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.pool import ModelPool, build_model
from deepsynth.inference.service import OCRService
from deepsynth.loop.registry import CHAMPION, ModelRegistry
from deepsynth.models.registered import ModelURI, RegistryError, RegistryReader
from tests.ppocr_helpers import synthetic_line
from tests.serving_engines import data_uri, running_server

ADMIN = {"Authorization": "Bearer s3cret"}  # the server's one token: /v1/* and /admin/*
LINE = "Hello world 42"
OLD, NEW = "Hello world 42", "Holle werld 42"  # v2 is v1 with 'e' and 'o' swapped in its charset


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[str, ModelRegistry]:
    """Two real PP-OCR checkpoints registered as versions 1 (champion) and 2 of ``ocr``."""
    from deepsynth.models.registry import load_engine

    root = tmp_path_factory.mktemp("registry")
    v1, v2 = root / "v1", root / "v2"
    load_engine("ppocr").save(v1)  # the shipped recogniser, saved like a fine-tuned model
    shutil.copytree(v1, v2)
    charset = json.loads((v2 / "charset.json").read_text())
    chars = charset["chars"]
    e, o = chars.index("e"), chars.index("o")
    chars[e], chars[o] = "o", "e"  # the same weights, a different (and distinguishable) reading
    (v2 / "charset.json").write_text(json.dumps(charset))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    reg = ModelRegistry(uri, root / "artifacts")
    for run, model in (("r1", v1), ("r2", v2)):
        reg.register("ocr", model, run_id=run, metrics={}, params={}, files={})
    reg.promote("ocr", "1")
    return uri, reg


def in_process(name: str, spec: str) -> OCRService:
    """The pool's factory: the model in the server's process (a model process per version costs minutes
    of CPU on a busy 2-core machine; the switch and drain are the same for both)."""
    return OCRService(spec, model_id=name, max_batch_size=4, max_wait_ms=5)


def promote(uri: str, *args: str) -> None:
    res = CliRunner().invoke(cli, ["loop", *args, "--tracking-uri", uri])
    assert res.exit_code == 0, res.output


def served_version(api: httpx.Client) -> str:
    return api.get("/v1/models").json()["data"][0]["registry"]["version"]


def test_resolve_names_what_exists(registry):
    uri, reg = registry
    reader = RegistryReader(uri)
    found = reader.fetch("models:/ocr@champion")
    assert (found.name, found.alias, found.version) == ("ocr", "champion", "1")
    assert (found.path / "charset.json").is_file()  # a local artifact store is read in place
    assert reader.fetch("models:/ocr/2").as_dict() == {"name": "ocr", "alias": None, "version": "2"}
    assert str(ModelURI.parse("models:/ocr@champion")) == "models:/ocr@champion"
    with pytest.raises(RegistryError, match=r"has no alias 'best' \(aliases: champion -> v1\)"):
        reader.resolve("models:/ocr@best")
    with pytest.raises(RegistryError, match=r"no registered model 'nope' .*registered: ocr"):
        reader.resolve("models:/nope@champion")
    with pytest.raises(RegistryError, match="has no version '7'"):
        reader.resolve("models:/ocr/7")
    with pytest.raises(RegistryError, match="models:/NAME@ALIAS"):
        reader.resolve("models:/ocr")
    with pytest.raises(RegistryError, match="does not exist"):
        RegistryReader(f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'missing.db'}")
    copied = reader.locate("ocr", "2", reg_dst := Path(uri.removeprefix("sqlite:///")).parent / "dl")
    assert copied.parent == reg_dst and json.loads((copied / "charset.json").read_text())["chars"]


def test_serving_follows_the_alias_under_load_with_zero_errors(registry):
    uri, reg = registry
    reader = RegistryReader(uri)
    spec = "models:/ocr@champion"
    pool = ModelPool(
        {"ocr": build_model("ocr", spec, in_process, reader)}, factory=in_process, registry=reader
    )
    settings = ServerSettings(token="s3cret", warmup=False, registry_poll_s=0.2)
    image = data_uri(synthetic_line(LINE))
    with (
        running_server(create_app(pool, settings)) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=300) as api,
    ):
        answers: list[tuple[float, float, int, str]] = []  # (sent, answered, status, text) in answer order
        per_thread: dict[int, list[str]] = {}
        stop = threading.Event()

        def client(k: int) -> None:
            seen = per_thread.setdefault(k, [])
            with httpx.Client(base_url=server.url, headers=ADMIN, timeout=300) as http:
                while not stop.is_set():
                    sent = time.monotonic()
                    r = http.post("/v1/ocr", json={"images": [image]})
                    text = r.json()["pages"][0]["text"] if r.status_code == 200 else r.text
                    answers.append((sent, time.monotonic(), r.status_code, text))
                    seen.append(text)

        def wait_for(n: int) -> None:
            target, deadline = len(answers) + n, time.monotonic() + 120
            while len(answers) < target and time.monotonic() < deadline:
                time.sleep(0.02)

        def wait_version(v: str) -> float:
            deadline = time.monotonic() + 120
            while served_version(api) != v:
                assert time.monotonic() < deadline, f"the server never served v{v}"
                time.sleep(0.05)
            return time.monotonic()

        card = api.get("/v1/models").json()["data"][0]
        assert card["id"] == "ocr" and card["registry"] == {
            "name": "ocr",
            "alias": "champion",
            "version": "1",
        }
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(8)
            promoted_at = time.monotonic()
            promote(uri, "promote", "ocr", "2")  # the poll picks the move up; nobody calls the server
            switched_at = wait_version("2")
            wait_for(8)
            rollback_at = time.monotonic()
            promote(uri, "rollback", "ocr")
            r = api.post("/admin/reload")  # at once, without waiting for the poll
            assert r.status_code == 200, r.text
            (row,) = r.json()["models"]
            assert row["version"] == "1" and row["status"] in (
                "reloaded",
                "unchanged",
            )  # the poll may be first
            back_at = time.monotonic()
            assert served_version(api) == "1"
            wait_for(8)
        finally:
            stop.set()
            for t in threads:
                t.join(300)

        assert {status for _, _, status, _ in answers} == {200}, answers  # zero errors through two swaps
        assert {text for *_, text in answers} == {OLD, NEW}
        assert all(text == OLD for _, done, _, text in answers if done < promoted_at)
        assert all(
            text == NEW for sent, done, _, text in answers if switched_at < sent and done < rollback_at
        )
        assert any(text == NEW for sent, _, _, text in answers if sent > switched_at)
        assert all(text == OLD for sent, _, _, text in answers if sent > back_at)
        for seen in per_thread.values():  # each client: old, then new, then old again; never back and forth
            runs = [t for i, t in enumerate(seen) if i == 0 or seen[i - 1] != t]
            assert any(runs == [OLD, NEW, OLD][i : i + len(runs)] for i in range(3)), runs

        bad = {
            "no token": httpx.post(f"{server.url}/admin/reload"),
            "unknown model": api.post("/admin/models", json={"action": "load", "name": "x",
                                                             "spec": "models:/nope@champion"}),
            "unknown alias": api.post("/admin/models", json={"action": "load", "name": "x",
                                                             "spec": "models:/ocr@best"}),
        }  # fmt: skip
        got = {k: (r.status_code, r.json()["error"]["type"]) for k, r in bad.items()}
        assert got == {
            "no token": (401, "unauthorized"),
            "unknown model": (400, "model_load_error"),
            "unknown alias": (400, "model_load_error"),
        }
        assert "no alias 'best'" in bad["unknown alias"].json()["error"]["message"]
        r = api.post("/admin/models", json={"action": "load", "name": "pinned", "spec": "models:/ocr/2"})
        assert r.status_code == 200, r.text
        pinned = api.post("/v1/ocr", json={"images": [image], "model": "pinned"}).json()
        assert pinned["pages"][0]["text"] == NEW
        cards = {c["id"]: c for c in api.get("/v1/models").json()["data"]}
        assert cards["pinned"]["registry"] == {"name": "ocr", "alias": None, "version": "2"}

        broken = reg.locate("ocr", "1", Path(uri.removeprefix("sqlite:///")).parent / "broken")
        (broken / "model.safetensors").write_bytes(b"not a tensor file")
        reg.register("ocr", broken, run_id="r3", metrics={}, params={}, files={})
        promote(uri, "promote", "ocr", "3")  # a version that cannot load: v1 keeps serving
        r = api.post("/admin/reload").json()["models"]
        row = next(m for m in r if m["name"] == "ocr")
        assert (row["status"], row["version"]) == ("failed", "1") and row["error"].startswith("v3: "), row
        assert api.post("/v1/ocr", json={"images": [image]}).json()["pages"][0]["text"] == OLD
        assert served_version(api) == "1"
        promote(uri, "rollback", "ocr")
    assert RegistryReader(uri).version_by_alias("ocr", CHAMPION) == "1"


def test_serve_refuses_a_bad_registry_spec_before_loading(registry, tmp_path):
    uri, _ = registry
    runner = CliRunner()
    port = ["--port", "0"]
    res = runner.invoke(cli, ["serve", "--model", "models:/ocr@best", "--tracking-uri", uri, *port])
    assert res.exit_code == 2 and "no alias 'best'" in res.output, res.output
    res = runner.invoke(
        cli, ["serve", "--model", "fr=models:/fraktur@champion", "--tracking-uri", uri, *port]
    )
    assert res.exit_code == 2 and "no registered model 'fraktur'" in res.output, res.output
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    res = runner.invoke(cli, ["serve", "--model", "models:/ocr@champion", "--tracking-uri", missing, *port])
    assert res.exit_code == 2 and "no model registry at" in res.output, res.output
    assert not (tmp_path / "none.db").exists()  # nothing created where the registry was expected
    res = runner.invoke(
        cli, ["serve", "--model", "models:/ocr@champion", *port], env={"MLFLOW_TRACKING_URI": ""}
    )
    assert res.exit_code == 2 and "--tracking-uri" in res.output, res.output


def model_processes(pid: int) -> list[int]:
    """The model processes (multiprocessing spawn children) of server ``pid``, whichever thread started them."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread or a child that has just exited
            for child in task.joinpath("children").read_text().split():
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


@pytest.mark.slow
def test_deepsynth_serve_swaps_the_model_process_when_the_champion_moves(registry, tmp_path):
    """The real command: `deepsynth serve --model ocr=models:/ocr@champion` (each version in its own model
    process) under 3 continuous clients while `deepsynth loop promote` moves the alias."""
    import signal

    from tests.test_server_cli import _start_serve

    uri, reg = registry
    assert reg.version_by_alias("ocr", CHAMPION) == "1"
    args = ["--model", "ocr=models:/ocr@champion", "--tracking-uri", uri, "--registry-poll", "0.5"]
    args += ["--token", "s3cret", "--max-batch-size", "4", "--max-wait-ms", "5", "--threads", "1"]
    proc, url = _start_serve(args, tmp_path / "serve.log", timeout_s=900)
    image = data_uri(synthetic_line(LINE))
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=300) as http:
            while not stop.is_set():
                sent = time.monotonic()
                r = http.post("/v1/ocr", json={"images": [image]})
                answers.append(
                    (sent, r.status_code, r.json()["pages"][0]["text"] if r.is_success else r.text)
                )

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=300) as api:
            (old_child,) = model_processes(proc.pid)
            for t in threads:
                t.start()
            while len(answers) < 6:
                time.sleep(0.05)
            promoted_at = time.monotonic()
            promote(uri, "promote", "ocr", "2")
            while served_version(api) != "2":
                assert time.monotonic() - promoted_at < 900, "the server never served v2"
                time.sleep(0.1)
            switched_at = time.monotonic()
            n = len(answers)
            while len(answers) < n + 6:
                time.sleep(0.05)
            deadline = time.monotonic() + 300
            while old_child in model_processes(proc.pid):  # closed once its last request is answered
                assert time.monotonic() < deadline, "the old model process was never closed"
                time.sleep(0.1)
            assert len(model_processes(proc.pid)) == 1  # the new version's process
    finally:
        stop.set()
        for t in threads:
            t.join(300)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        promote(uri, "rollback", "ocr")
    log = (tmp_path / "serve.log").read_text()
    assert code == 0 and "Traceback" not in log, log
    assert {status for _, status, _ in answers} == {200}, answers
    assert all(text == OLD for sent, _, text in answers if sent < promoted_at)
    assert all(text == NEW for sent, _, text in answers if sent > switched_at)
    print(
        f"\nswap: {len(answers)} requests, 0 errors; alias move -> v2 served in {switched_at - promoted_at:.1f} s "
        f"(poll 0.5 s + a new model process); {sum(t == OLD for *_, t in answers)} answers by v1, "
        f"{sum(t == NEW for *_, t in answers)} by v2"
    )
