"""Reading with a character LM (models/ppocr/lm.py): the n-gram, the prefix beam search, the adapter's fit /
save / load / ONNX export, and the trainer choosing the weights on validation (tiny PP-OCRv6, real lines)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepsynth.config import ConfigError, load_config
from deepsynth.evaluation.metrics import cer
from deepsynth.models.ppocr.adapter import PPOCRAdapter
from deepsynth.models.ppocr.charset import Charset
from deepsynth.models.ppocr.lm import DECODER_FILE, EOS, CharNGram, LMDecoder
from deepsynth.models.registry import load_engine
from deepsynth.training.config import LMSettings, TrainConfig
from tests._train_data import real_lines, tiny_adapter
from tests.test_train import run


def test_char_ngram_is_a_distribution_after_any_history():
    texts = ["vous avez", "nous avons vu", "vos voeux"]
    vocab = sorted({c for t in texts for c in t})
    lm = CharNGram(texts, order=4, vocab_size=len(vocab))
    for history in ("", "v", "nous a", "zzz", "vo"):
        total = sum(math.exp(lm.logp(history, c)) for c in [*vocab, EOS])
        assert total == pytest.approx(1.0, abs=1e-9), history
    assert lm.logp("vo", "u") > lm.logp("vo", "n")  # seen after "vo" vs never
    with pytest.raises(ValueError, match="order"):
        CharNGram(texts, order=0)


def _frames(rows: list[dict[str, float]], charset: Charset) -> np.ndarray:
    """[frames, classes] probabilities from {char: p} per frame; the rest of each frame is blank."""
    probs = np.zeros((len(rows), charset.num_classes), dtype=np.float32)
    for t, row in enumerate(rows):
        for ch, p in row.items():
            probs[t, charset.index[ch]] = p
        probs[t, 0] = 1.0 - sum(row.values())
    return probs


def test_beam_search_sums_the_alignments_greedy_misses():
    charset = Charset(list("ab"))
    probs = _frames([{"a": 0.3, "b": 0.25}, {"a": 0.3, "b": 0.25}], charset)  # blank 0.45 in each frame
    assert charset.emitted(probs[None])[0] == []  # greedy: blank, blank
    # P("a") = .3*.3 + 2 * .3*.45 = .36 beats P("b") = .2875 and P("") = .45*.45 = .2025
    read = LMDecoder(["ab"], alpha=0.0, beta=0.0).emitted(probs, charset)
    assert [ch for ch, _ in read] == ["a"] and read[0][1] == pytest.approx(0.3)


def test_the_lm_reads_the_letter_the_training_texts_make_plausible():
    charset = Charset(list("nouvsaez "))
    rows = [{"v": 0.9}, {}, {"o": 0.9}, {}, {"n": 0.5, "u": 0.45}, {}, {"s": 0.9}]
    probs = _frames(rows, charset)
    greedy = "".join(ch for ch, _ in charset.emitted(probs[None])[0])
    decoder = LMDecoder.fit(["vous avez", "nous vous", "vous"], alpha=1.0, beta=0.0)
    read = decoder.emitted(probs, charset)
    assert greedy == "vons" and "".join(ch for ch, _ in read) == "vous"
    assert dict(read)["u"] == pytest.approx(0.45)  # the probability a frame gave the character read
    assert "".join(ch for ch, _ in decoder.with_weights(0.0, 0.0).emitted(probs, charset)) == "vons"
    assert LMDecoder.from_json(decoder.to_json()) == decoder
    with pytest.raises(ValueError, match="not a valid LM decoder"):
        LMDecoder.from_json('{"texts": [], "colour": 1}', "x/lm_decoder.json")


def test_the_adapter_fits_saves_reloads_and_exports_its_reader(tmp_path):
    lines = real_lines(10)
    adapter = tiny_adapter(lines)
    images = [s.image for s in lines[:4]]
    settings = LMSettings(enabled=True, alphas=[0.5, 2.0], betas=[4.0])
    # a score that prefers long readings: the LM's bonus per character wins over greedy
    report = adapter.fit_lm_decoder(
        [s.text for s in lines], images, lambda hyps: -sum(map(len, hyps)), settings, save_to=tmp_path
    )
    scores = [t["score"] for t in report["tried"]]
    assert len(report["tried"]) == 3 and report["tried"][0]["greedy"]
    assert report["chosen"]["score"] == min(scores) < scores[0]
    assert adapter.lm_decoder is not None and adapter.lm_decoder.alpha == report["chosen"]["alpha"]
    assert LMDecoder.load(tmp_path) == adapter.lm_decoder
    reads = [p.text for p in adapter.recognize(images)]
    adapter.lm_decoder = None
    greedy = [p.text for p in adapter.recognize(images)]
    assert sum(map(len, reads)) > sum(map(len, greedy))

    adapter.lm_decoder = LMDecoder.load(tmp_path)
    adapter.save(tmp_path / "model")
    loaded = PPOCRAdapter.load(tmp_path / "model")
    assert loaded.lm_decoder == adapter.lm_decoder
    assert [p.text for p in loaded.recognize(images)] == reads
    onnx = load_engine(f"ppocr-onnx:{adapter.export_onnx(tmp_path / 'rec.onnx')}")
    assert onnx.lm_decoder == adapter.lm_decoder
    assert [p.text for p in onnx.recognize(images)] == reads

    # a score no candidate beats: greedy stays, and the saved reader is removed
    report = adapter.fit_lm_decoder(
        [s.text for s in lines], images, lambda hyps: 1.0, settings, save_to=tmp_path
    )
    assert report["chosen"]["greedy"] and adapter.lm_decoder is None
    assert not (tmp_path / DECODER_FILE).exists()


def test_config_validates_the_lm_settings():
    assert load_config(TrainConfig, None, []).lm.enabled is False
    for bad in ("lm.order=0", "lm.beam=0", "lm.alphas=[]", "lm.alphas=[-1]"):
        with pytest.raises(ConfigError, match=r"lm\."):
            load_config(TrainConfig, None, [bad])


def test_training_chooses_the_reader_on_validation_and_the_saved_model_reads_with_it(tmp_path):
    lines = real_lines(12)
    result, trainer = run(
        tmp_path, "max_steps=4", "optim.lr=3e-3", "eval.every_steps=2", "lm.enabled=true",
        adapter=tiny_adapter(lines), samples=lines[:8], eval_samples=lines[8:],
    )  # fmt: skip
    report = result.lm
    assert report is not None and len(report["tried"]) == 1 + 3 * 3 and report["texts"] == 8
    assert report["chosen"]["score"] == min(t["score"] for t in report["tried"])
    best = load_engine(str(result.best_dir))
    assert (best.lm_decoder is None) == report["chosen"]["greedy"]
    assert (tmp_path / "best" / DECODER_FILE).is_file() == (not report["chosen"]["greedy"])
    hyps = [p.text for p in best.recognize([s.image for s in lines[8:]])]
    assert cer([s.text for s in lines[8:]], hyps) == pytest.approx(report["chosen"]["score"])
    assert trainer.adapter.lm_decoder is None  # the training adapter itself read greedily throughout


def test_a_trained_model_is_reread_with_the_lm_as_training_would(tmp_path):
    """``reread_with_lm`` (bench_hard_documents --reread) fits the reader on the train texts, chooses it on
    validation like the trainer, and scores the copy against the starting model's test run."""
    from deepsynth.evaluation.harness import evaluate_engine
    from deepsynth.training.experiment import HeldOut, reread_with_lm

    lines = real_lines(14)
    result, _ = run(
        tmp_path / "run", "max_steps=3", "optim.lr=3e-3", "eval.every_steps=3",
        adapter=tiny_adapter(lines), samples=lines[:8], eval_samples=lines[8:11],
    )  # fmt: skip
    split = HeldOut(lines[:8], lines[8:11], lines[11:], key="page_id")
    evaluate_engine(
        load_engine(result.best_dir), split.test, tmp_path / "before", progress=False, report=False
    )
    cfg = load_config(TrainConfig, None, ["lm.enabled=true", "lm.alphas=[0.5]", "lm.betas=[0.5,1.0]"])
    summary = reread_with_lm(cfg, split, result.best_dir, tmp_path / "lm", tmp_path / "before")
    lm = summary["train"]["lm"]
    assert summary["train"]["reread_from"] == result.best_dir and "val_greedy" in lm
    copy = tmp_path / "lm" / "train" / "best"
    assert (copy / DECODER_FILE).is_file() == (not lm["greedy"])
    assert not (tmp_path / "run" / "best" / DECODER_FILE).exists()  # the source model is left as it was
    reread = [p.text for p in load_engine(str(copy)).recognize([s.image for s in split.test])]
    assert summary["after"]["cer"] == pytest.approx(cer([s.text for s in split.test], reread))
    assert summary["cer_change"]["n"] == len(split.test)
