"""Optional push to the Hub: off by default; offline it fails clearly without losing the run.

The Hub itself cannot be reached here, so the upload test stands in a recording HfApi (the remote hub is the
one thing mocked); everything else (training, saving, the directory uploaded) is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub

from tests.test_train import run


def test_off_by_default(tmp_path):
    result, _ = run(tmp_path, "max_steps=1")
    assert result.hub_url is None and result.hub_error is None


def test_offline_push_fails_clearly_and_keeps_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result, _ = run(tmp_path, "max_steps=1", "checkpoint.push_to_hub=acme/fraktur-ocr")
    assert "acme/fraktur-ocr" in result.hub_error and "still at" in result.hub_error
    assert (Path(result.final_dir) / "deepsynth_model.json").is_file()
    assert json.loads((tmp_path / "result.json").read_text())["hub_error"] == result.hub_error


def test_uploads_the_saved_model_dir(tmp_path, monkeypatch):
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, revision, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    result, _ = run(tmp_path, "max_steps=1", "checkpoint.push_to_hub=acme/x", "checkpoint.hub_private=false")
    assert result.hub_error is None and result.hub_url.endswith("acme/x/commit/1")
    assert calls[0] == ("create", "acme/x", False)
    assert calls[1][0] == "upload" and "deepsynth_model.json" in calls[1][2]
