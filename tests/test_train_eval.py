"""The trainer's evaluation runs through the evaluation harness: a bad eval sample is reported, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from deepsynth.data import Sample
from deepsynth.models.ppocr.adapter import PPOCRAdapter
from deepsynth.training.trainer import Trainer
from tests._train_data import real_lines
from tests.test_train import make_cfg

POISON_WIDTH = 397  # the one eval image the engine fails on


class FailsOnOneImage(PPOCRAdapter):
    """The tiny real recogniser, failing (like a model hitting a bad input) on images of POISON_WIDTH."""

    def recognize(self, images, generation=None):
        if any(im.size[0] == POISON_WIDTH for im in images):
            raise RuntimeError("kernel failed on this image")
        return super().recognize(images, generation)


def test_eval_isolates_engine_failures_and_unreadable_images(tmp_path):
    train, good = real_lines(8), real_lines(12)[8:]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = [
        Sample.from_image("poison", Image.new("RGB", (POISON_WIDTH, 48), "white"), "x"),
        Sample(id="unreadable", text="x", image_loader=lambda: Image.open(broken)),
    ]
    adapter = FailsOnOneImage.tiny_random("".join(sorted({c for s in real_lines(12) for c in s.text})))
    cfg = make_cfg(tmp_path / "run", "max_steps=2", "eval.every_steps=1", "eval.batch_size=8")
    result = Trainer(cfg, adapter=adapter, train_samples=train, eval_samples=[*good, *bad]).run()
    assert result.steps == 2 and len(result.evals) == 2
    assert all(e["n"] == len(good) for e in result.evals)  # the good samples are still scored
    skipped = json.loads(Path(result.run_dir, "data_report.json").read_text())["skipped"]
    by_id = {s["id"]: s for s in skipped}
    assert "engine error: RuntimeError: kernel failed" in by_id["poison"]["reason"]
    assert by_id["unreadable"]["kind"] == "corrupt_image"
    assert len(skipped) == 2  # reported once, not once per evaluation
