"""Sample store privacy: off writes nothing, redaction, image blur/omit, seeded sampling, retention, audit log."""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsynth.observability import Observability
from deepsynth.observability.redaction import luhn_ok, redact
from deepsynth.observability.samples import (
    NoopSampleStore,
    SampleSettings,
    SampleStore,
    prepare_image,
    sample_store_from_env,
)

PERSONAL = (
    "Jane Doe, jane.doe+ocr@example.co.uk, Tel. +33 6 12 34 56 78, Büro (030) 1234567, US 555-123-4567, "
    "IBAN DE89 3704 0044 0532 0130 00, GB82WEST12345698765432, Visa 4111 1111 1111 1111, MC 5500-0000-0000-0004"
)
HARMLESS = [
    "Paris, 15.01.2024 10:30",
    "Report 2024-01-15 10:30:15 page 12 of 345",
    "born 12/03/1919, died 1914-1918 war; pp. 120-135",
    "Total: 1.234.567,89 EUR and USD 12,345,678.90 or € 1 234,56",
    "Population 12 345 678 in 1921",
    "Order 4111 1111 1111 1112 (not a card: Luhn fails)",
    "ISBN 978-3-16-148410-0",
    "General Assembly-Forty-fourth Session, resolution 44/192",
]


class FakeClock:
    def __init__(self, t: float = 1_780_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _store(tmp_path: Path, clock=None, **kw) -> SampleStore:
    kw.setdefault("rate", 1.0)
    kw.setdefault("background", False)
    return SampleStore(SampleSettings(directory=tmp_path / "samples", **kw), clock=clock or FakeClock())


def _audit(store: SampleStore) -> list[dict]:
    return [json.loads(line) for line in store.audit_path.read_text().splitlines()]


def test_off_by_default_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEEPSYNTH_SAMPLES_DIR", raising=False)
    assert isinstance(sample_store_from_env(), NoopSampleStore)
    obs = Observability.from_env(model_id="m", env={})
    with obs.request("/v1/ocr") as ctx:
        pass
    obs.maybe_store_sample(ctx.request_id, Image.new("RGB", (64, 32)), PERSONAL, ctx.timings, "m")
    obs.close()
    assert list(tmp_path.rglob("*")) == []


def test_redaction_of_personal_data():
    text, counts = redact(PERSONAL)
    for secret in ("jane.doe", "12 34 56 78", "1234567", "555-123-4567", "3704", "WEST1234", "4111", "5500"):
        assert secret not in text, (secret, text)
    assert counts == {"email": 1, "phone": 3, "iban": 2, "card": 2}
    assert text.startswith("Jane Doe, [EMAIL], Tel. [PHONE], Büro [PHONE], US [PHONE], IBAN [IBAN], [IBAN]")


@pytest.mark.parametrize("text", HARMLESS)
def test_no_false_positives_on_dates_amounts_and_references(text):
    assert redact(text) == (text, {})


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def test_stored_record_is_redacted_with_timings_and_audit(tmp_path):
    store = _store(tmp_path, image_mode="thumbnail")
    img = Image.new("RGB", (800, 100), "white")
    assert store.maybe_store("req-1", img, PERSONAL, {"model": 0.125, "queue": 0.01}, "rapidocr")
    (rec,) = store.list_samples()
    assert "jane" not in rec["text"] and "[IBAN]" in rec["text"] and rec["redacted"] is True
    assert rec["redactions"]["phone"] == 3 and rec["request_id"] == "req-1" and rec["model_id"] == "rapidocr"
    assert rec["timings_ms"] == {"model": 125.0, "queue": 10.0}
    thumb = Image.open(store.root / rec["image"])
    assert max(thumb.size) == 256 and thumb.size[0] / thumb.size[1] == pytest.approx(8, rel=0.05)
    (opened, stored) = _audit(store)
    assert opened["action"] == "open" and stored["action"] == "store"
    assert stored["sample_id"] == rec["sample_id"] and stored["redactions"] == rec["redactions"]
    assert stored["files"] == [f"records/{rec['sample_id']}.json", rec["image"]]
    assert "jane" not in store.audit_path.read_text().lower()  # the audit log never holds the text


def test_redaction_off_keeps_text(tmp_path):
    store = _store(tmp_path, redact=False, image_mode="omit")
    store.maybe_store("r", None, PERSONAL, {}, "m")
    (rec,) = store.list_samples()
    assert rec["text"] == PERSONAL and rec["redactions"] == {} and rec["image"] is None
    assert list(store.images_dir.iterdir()) == []


def _rapidocr_text(jpeg: bytes) -> str:
    rapidocr = pytest.importorskip("rapidocr")
    engine = rapidocr.RapidOCR()
    rgb = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    return "".join(engine(rgb[:, :, ::-1], use_det=False, use_cls=False, use_rec=True).txts or ())


def test_blur_makes_a_real_line_unreadable_and_omit_stores_no_image(shared_data, tmp_path):
    rows = [json.loads(x) for x in (shared_data / "fondue_en_print20" / "manifest.jsonl").open()]
    row = next(r for r in rows if r["level"] == "line" and len(r["text"]) > 30)
    line = Image.open(shared_data / "fondue_en_print20" / row["image"])
    thumb, blurred = prepare_image(line, "thumbnail", 256), prepare_image(line, "blur", 256)
    assert prepare_image(line, "omit", 256) is None
    from rapidfuzz.distance import Levenshtein

    readable = _rapidocr_text(thumb)
    assert Levenshtein.normalized_distance(readable, row["text"]) < 0.2, readable  # the thumbnail is legible
    unreadable = _rapidocr_text(blurred)
    assert Levenshtein.normalized_distance(unreadable, row["text"]) > 0.8, unreadable
    store = _store(tmp_path, image_mode="omit")
    store.maybe_store("r", line, row["text"], {}, "m")
    assert store.list_samples()[0]["image"] is None and not any(store.images_dir.iterdir())


def test_sampling_rate_is_honoured_and_seeded(tmp_path):
    store = _store(tmp_path, rate=0.2, seed=7, image_mode="omit", max_count=10_000)
    kept = [store.maybe_store(f"r{i}", None, "x", {}, "m") for i in range(500)]
    rng = random.Random(7)
    assert kept == [rng.random() < 0.2 for _ in range(500)]
    assert 70 <= sum(kept) <= 130  # binomial(500, 0.2): mean 100, sd ~9
    assert len(store.list_samples()) == sum(kept)
    assert not any(
        _store(tmp_path / "zero", rate=0.0).maybe_store("r", None, "x", {}, "m") for _ in range(50)
    )


def test_retention_by_count_deletes_oldest_and_audits(tmp_path):
    clock = FakeClock()
    store = _store(tmp_path, clock=clock, max_count=3)
    for i in range(5):
        clock.t += 60
        store.maybe_store(f"r{i}", Image.new("RGB", (40, 20)), f"text {i}", {}, "m")
    assert [r["request_id"] for r in store.list_samples()] == ["r2", "r3", "r4"]
    assert len(list(store.images_dir.iterdir())) == 3
    deletes = [e for e in _audit(store) if e["action"] == "delete"]
    assert [e["reason"] for e in deletes] == ["max_count", "max_count"]
    assert [e["sample_id"].endswith(rid) for e, rid in zip(deletes, ["r0", "r1"], strict=True)] == [
        True,
        True,
    ]
    assert all(len(e["files"]) == 2 for e in deletes)


def test_retention_by_age_also_on_restart(tmp_path):
    clock = FakeClock()
    store = _store(tmp_path, clock=clock, max_age_seconds=3600)
    store.maybe_store("old", None, "a", {}, "m")
    clock.t += 1800
    store.maybe_store("new", None, "b", {}, "m")
    clock.t += 2400  # "old" is now 70 min old, "new" 40 min
    assert store.enforce_retention() == 1
    assert [r["request_id"] for r in store.list_samples()] == ["new"]
    clock.t += 3600
    reopened = _store(tmp_path, clock=clock, max_age_seconds=3600)  # a restarted service purges at start
    assert reopened.list_samples() == []
    reasons = [(e["action"], e.get("reason")) for e in _audit(reopened)]
    assert reasons.count(("delete", "max_age")) == 2 and reasons.count(("store", None)) == 2


def test_env_configuration_and_background_writer(tmp_path):
    env = {
        "DEEPSYNTH_SAMPLES_DIR": str(tmp_path / "s"),
        "DEEPSYNTH_SAMPLES_RATE": "1",
        "DEEPSYNTH_SAMPLES_MAX_COUNT": "2",
        "DEEPSYNTH_SAMPLES_MAX_AGE_DAYS": "0.5",
        "DEEPSYNTH_SAMPLES_IMAGE": "thumbnail",
        "DEEPSYNTH_SAMPLES_THUMBNAIL_PX": "64",
    }
    obs = Observability.from_env(model_id="m", env=env)
    assert obs.samples.settings.max_age_seconds == 43200 and obs.samples.settings.background
    for i in range(3):
        with obs.request("/v1/ocr", f"r{i}") as ctx:
            obs.maybe_store_sample(ctx.request_id, Image.new("RGB", (300, 100)), "call 0171 2345678", {}, "m")
    obs.samples.flush()
    recs = obs.samples.list_samples()
    assert [r["text"] for r in recs] == ["call [PHONE]"] * 2
    assert max(Image.open(obs.samples.root / recs[0]["image"]).size) == 64
    body = obs.exposition()[0].decode()
    assert 'deepsynth_samples_stored_total{model="m"} 3.0' in body
    assert 'deepsynth_samples_deleted_total{reason="max_count"} 1.0' in body
    obs.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DEEPSYNTH_SAMPLES_RATE", "1.5"),
        ("DEEPSYNTH_SAMPLES_RATE", "often"),
        ("DEEPSYNTH_SAMPLES_MAX_COUNT", "0"),
        ("DEEPSYNTH_SAMPLES_IMAGE", "full"),
        ("DEEPSYNTH_SAMPLES_REDACT", "maybe"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        SampleSettings.from_env({"DEEPSYNTH_SAMPLES_DIR": str(tmp_path), key: value})


def test_pages_of_one_request_in_the_same_microsecond_are_all_kept_in_order(tmp_path):
    store = _store(tmp_path, image_mode="omit")  # the fake clock does not move between pages
    for page in range(3):
        store.maybe_store("multi-page", None, f"page {page}", {}, "m")
    recs = store.list_samples()
    assert [r["text"] for r in recs] == ["page 0", "page 1", "page 2"]
    assert len({r["sample_id"] for r in recs}) == 3


def test_samples_cli_lists_shows_and_deletes_without_applying_its_own_retention(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    clock = FakeClock(time.time() - 30 * 86400)  # written a month ago by a server that keeps 60 days
    store = _store(tmp_path, clock=clock, max_age_seconds=60 * 86400)
    for rid in ("keep", "subject", "subject", "other"):
        clock.t += 1
        store.maybe_store(rid, Image.new("RGB", (40, 20), "white"), f"mail {rid}@example.com", {}, "m")
    ids = {r["request_id"]: r["sample_id"] for r in store.list_samples()}
    runner = CliRunner()
    monkeypatch.setenv("DEEPSYNTH_SAMPLES_DIR", str(store.root))

    listed = runner.invoke(app, ["samples", "list"])
    assert listed.exit_code == 0, listed.output
    assert len([line for line in listed.stdout.splitlines() if "request=" in line]) == 4
    assert "redactions=email=1" in listed.stdout and "example.com" not in listed.stdout
    # opening the store from the CLI (default settings: 7 days) deleted nothing the server keeps
    assert len(store.list_samples()) == 4

    shown = runner.invoke(app, ["samples", "show", ids["keep"]])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["text"] == "mail [EMAIL]"

    gone = runner.invoke(app, ["samples", "delete", "--request-id", "subject", "--reason", "subject_request"])
    assert gone.exit_code == 0 and "deleted 2 sample(s)" in gone.stdout
    left = runner.invoke(app, ["samples", "list", "--json", "--dir", str(store.root)])
    assert [json.loads(line)["request_id"] for line in left.stdout.splitlines()] == ["keep", "other"]
    assert sorted(p.stem for p in store.images_dir.iterdir()) == sorted([ids["keep"], ids["other"]])
    audit = [e for e in _audit(store) if e["action"] == "delete"]
    assert [e["reason"] for e in audit] == ["subject_request", "subject_request"]
    assert all(len(e["files"]) == 2 for e in audit)
    assert [e["action"] for e in _audit(store)].count("open") == 1  # the CLI did not log an "open"

    missing = runner.invoke(app, ["samples", "delete", ids["keep"], "no-such-id"])
    assert missing.exit_code == 1 and "not found: no-such-id" in missing.stdout
    assert [r["request_id"] for r in store.list_samples()] == ["other"]
    nowhere = runner.invoke(app, ["samples", "list", "--dir", str(tmp_path / "nope")])
    assert nowhere.exit_code == 2 and "no sample store at" in nowhere.stderr
