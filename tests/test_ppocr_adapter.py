"""PP-OCRv6 adapter: conversion parity with onnxruntime, CTC training pieces, save/load, registry."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deepsynth.data.sample import Sample, SampleError
from deepsynth.models.ppocr.adapter import PPOCRAdapter, build
from deepsynth.models.ppocr.preprocess import frames_for_width, preprocess_batch
from deepsynth.models.registry import load_engine
from tests.ppocr_helpers import real_lines, synthetic_samples

TINY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,"


@pytest.fixture(scope="module")
def shipped() -> PPOCRAdapter:
    return PPOCRAdapter.from_shipped()


@pytest.fixture()
def tiny() -> PPOCRAdapter:
    return PPOCRAdapter.tiny_random(TINY_CHARS, seed=0)


def test_shipped_matches_onnxruntime_on_real_lines(shipped, shared_data):
    """42 real lines (14 per set): same greedy strings as onnxruntime, probabilities within 1e-3."""
    import onnxruntime as ort

    from deepsynth.models.ppocr.convert import shipped_model_path

    assert shipped.charset.num_classes == 18710 and shipped.charset.chars[-1] == " "
    session = ort.InferenceSession(str(shipped_model_path()), providers=["CPUExecutionProvider"])
    samples = real_lines(shared_data, per_set=14)
    images = [s.image for s in samples]
    worst, differing, frames = 0.0, 0, 0
    for start in range(0, len(images), 6):
        chunk = images[start : start + 6]
        ref = session.run(None, {session.get_inputs()[0].name: preprocess_batch(chunk)})[0]
        got = shipped.probabilities(chunk)
        assert got.shape == ref.shape
        worst = max(worst, float(np.abs(ref - got).max()))
        frames += int((ref.argmax(-1) != got.argmax(-1)).sum())
        ref_txt = [t for t, _ in shipped.charset.decode_greedy(ref)]
        got_txt = [t for t, _ in shipped.charset.decode_greedy(got)]
        differing += sum(a != b for a, b in zip(ref_txt, got_txt, strict=True))
    print(f"parity: {len(images)} lines, max |dp| = {worst:.2e}, {frames} frames change class")
    assert differing == 0
    assert worst <= 1e-3


def test_recognize_reads_real_lines(shipped, shared_data):
    samples = real_lines(shared_data, per_set=4, sets=("fondue_en_print20",))
    preds = shipped.recognize([s.image for s in samples])
    from rapidfuzz.distance import Levenshtein

    errors = sum(Levenshtein.distance(s.text, p.text) for s, p in zip(samples, preds, strict=True))
    assert errors / sum(len(s.text) for s in samples) < 0.05
    assert all(0.5 < p.confidence <= 1.0 for p in preds)


def test_shipped_loss_is_low_and_trains_every_parameter(shipped, shared_data):
    batch = shipped.collate(real_lines(shared_data, per_set=2, sets=("fondue_en_print20", "tapuscorpus_fr")))
    shipped.train_mode()
    try:
        assert all(not m.training for m in shipped.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        loss = shipped.loss(batch)
        loss.backward()
        assert 0 <= loss.item() < 2.0  # a good pretrained model; BatchNorm in train mode gives ~10
        params = list(shipped.model.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    finally:
        shipped.model.zero_grad(set_to_none=True)
        shipped.eval_mode()


def test_collate_layout_and_targets(tiny):
    samples = synthetic_samples(["abc", "hello world"])
    batch = tiny.collate(samples)
    assert batch["pixel_values"].shape[:3] == (2, 3, 48) and batch["pixel_values"].shape[3] >= 320
    assert batch["target_lengths"].tolist() == [3, 11]
    space = tiny.charset.index[" "]
    assert batch["targets"][3:].tolist()[5] == space and 0 not in batch["targets"].tolist()
    assert batch["ids"] == ["syn0", "syn1"]


def test_collate_rejects_bad_samples_by_id(tiny):
    with pytest.raises(SampleError, match="'blank'.*empty"):
        tiny.collate([Sample.from_image("blank", synthetic_samples(["x"])[0].image, "   ")])
    with pytest.raises(SampleError, match="'greek'.*no trainable"):
        tiny.collate([Sample.from_image("greek", synthetic_samples(["x"])[0].image, "ΑΒΓ")])

    def broken():
        raise OSError("truncated file")

    with pytest.raises(SampleError, match="'broken'.*unreadable"):
        tiny.collate([Sample(id="broken", text="abc", image_loader=broken)])
    long_text = "ab" * 200  # 400 characters: more than 4x what a short line's frames can hold
    with pytest.raises(SampleError, match="'long'.*frames.*widened"):
        tiny.collate([Sample.from_image("long", synthetic_samples(["ab"])[0].image, long_text)])


def test_collate_widens_lines_whose_text_needs_more_frames(tiny):
    """A dense line (text needs more CTC frames than its width gives) is widened, not dropped."""
    image = synthetic_samples(["abab"])[0].image  # a short line: padded to 320 px = 40 frames
    natural = tiny.collate([Sample.from_image("short", image, "ab")])
    assert natural["stretched"] == 0
    dense = tiny.collate([Sample.from_image("dense", image, "ab" * 30)])  # 60 labels > 40 frames
    assert dense["stretched"] == 1 and "dense" in tiny.stretched_ids
    width = dense["pixel_values"].shape[3]
    assert frames_for_width(width) >= 60
    assert torch.isfinite(tiny.loss(dense))
    # lines that fit keep rapidocr's exact preprocessing
    assert torch.equal(natural["pixel_values"], tiny.preprocess([image]))


def test_frames_formula_matches_model(tiny):
    for width in (320, 321, 327, 600, 801):
        logits = tiny.logits(torch.zeros(1, 3, 48, width))
        assert logits.shape == (1, frames_for_width(width), tiny.charset.num_classes)


def test_tiny_training_steps_lower_loss(tiny):
    torch.manual_seed(0)
    batch = tiny.collate(synthetic_samples(["abc", "de fg", "hello", "world 42"]))
    tiny.train_mode()
    opt = torch.optim.AdamW(tiny.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        loss = tiny.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_probabilities_match_forward_softmax(tiny):
    x = tiny.preprocess([synthetic_samples(["abc"])[0].image])
    with torch.no_grad():
        ref = tiny.core(x).last_hidden_state
        mine = torch.softmax(tiny.logits(x), -1)
    torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)


def test_save_load_roundtrip_and_registry(tiny, tmp_path):
    images = [s.image for s in synthetic_samples(["abc", "xyz 12"])]
    before = tiny.probabilities(images)
    tiny.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "deepsynth_model.json").read_text())
    assert card["family"] == "ppocr" and card["num_classes"] == tiny.charset.num_classes
    for engine in (
        PPOCRAdapter.load(tmp_path / "m"),
        load_engine(f"ppocr:{tmp_path / 'm'}"),
        load_engine(str(tmp_path / "m")),
    ):
        assert isinstance(engine, PPOCRAdapter)
        assert engine.charset.chars == tiny.charset.chars
        np.testing.assert_array_equal(engine.probabilities(images), before)
    with pytest.raises(TypeError, match="unknown options"):
        build(str(tmp_path / "m"), beams=3)
    with pytest.raises(FileNotFoundError, match="not a model saved by DeepSynth"):
        PPOCRAdapter.load(tmp_path)


def test_shipped_save_load_keeps_layer_norm_eps(shipped, tmp_path, shared_data):
    shipped.save(tmp_path / "s")
    loaded = PPOCRAdapter.load(tmp_path / "s")
    assert loaded.core.head.encoder.norm.eps == pytest.approx(1e-6)
    assert loaded.core.head.encoder.svtr_block[0].layer_norm1.eps == pytest.approx(1e-5)
    images = [s.image for s in real_lines(shared_data, per_set=2, sets=("tapuscorpus_fr",))]
    np.testing.assert_array_equal(loaded.probabilities(images), shipped.probabilities(images))


def test_preprocess_matches_rapidocr_resize_norm_img_and_handles_alpha():
    """preprocess_batch == rapidocr's TextRecognizer.resize_norm_img (its own code, on the same BGR arrays)."""
    from PIL import Image
    from rapidocr.ch_ppocr_rec.main import TextRecognizer

    from deepsynth.models.ppocr.preprocess import to_bgr

    images = [
        synthetic_samples(["short"])[0].image,
        synthetic_samples(["a rather longer line of text"])[0].image,
    ]
    bgrs = [to_bgr(im) for im in images]
    ratio = max(320 / 48, *(b.shape[1] / b.shape[0] for b in bgrs))
    reference = SimpleNamespace(rec_image_shape=[3, 48, 320])
    expected = np.stack([TextRecognizer.resize_norm_img(reference, b, ratio) for b in bgrs])
    np.testing.assert_array_equal(preprocess_batch(images), expected)
    np.testing.assert_array_equal(to_bgr(images[0])[:, :, ::-1], np.asarray(images[0]))  # RGB → BGR

    transparent = Image.new("RGBA", (60, 30), (0, 0, 0, 0))  # fully transparent black reads as white paper
    assert to_bgr(transparent).min() == 255


def test_gradient_checkpointing_keeps_loss_and_gradients(shared_data):
    """Checkpointing the backbone re-runs it in backward: the same loss and gradients, far less stored."""
    from deepsynth.models.ppocr import checkpointing

    samples = real_lines(shared_data, per_set=2, sets=("gt4histocr_dta19_lines", "tapuscorpus_fr"))
    runs = {}
    for mode in ("off", "stages", "blocks"):
        adapter = PPOCRAdapter.from_shipped(gradient_checkpointing=mode)
        adapter.prepare_for_training(None)
        adapter.train_mode()
        batch = adapter.collate(samples)
        stored: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, kept=stored: kept.append(t.nbytes) or t, lambda t: t
        ):
            loss = adapter.loss(batch)
        loss.backward()
        grads = {n: p.grad for n, p in adapter.model.named_parameters() if p.requires_grad}
        runs[mode] = (loss.item(), grads, sum(stored))
        adapter.eval_mode()  # inference never checkpoints (no graph to save)
        assert adapter.recognize([s.image for s in samples[:1]])[0].text
    loss_off, grads_off, stored_off = runs["off"]
    for mode in ("stages", "blocks"):
        loss, grads, stored = runs[mode]
        assert abs(loss - loss_off) <= 1e-6, mode
        assert grads.keys() == grads_off.keys()
        for name, g in grads_off.items():
            assert torch.allclose(g, grads[name], rtol=1e-4, atol=1e-6), (mode, name)
        assert stored < 0.5 * stored_off, mode  # the backbone's activations are no longer kept
    assert checkpointing.parse_mode(True) == "blocks" and checkpointing.parse_mode("false") == "off"
    with pytest.raises(ValueError, match="gradient_checkpointing must be one of"):
        checkpointing.parse_mode("layers")
