"""Character-set extension of the PP-OCR recogniser: new classes, sensible init, trainable, saved."""

from __future__ import annotations

import numpy as np
import torch

from deepsynth.models.ppocr.adapter import PPOCRAdapter
from deepsynth.models.ppocr.charset import Charset, normalize_text
from tests.ppocr_helpers import real_lines, synthetic_samples


def test_charset_encode_decode_and_base_letters():
    cs = Charset(["a", "b", "s", "e", "-", " "])
    assert cs.encode("  a  b\u00a0s ") == ([1, 6, 2, 6, 3], [])  # whitespace collapsed to one space class
    assert cs.encode("ax") == ([1], ["x"])
    assert cs.missing(["aſ", "ſ¬x", "b"]) == ["ſ", "¬", "x"]
    assert cs.base_class("ſ") == cs.index["s"]  # NFKD(ſ) = s
    assert cs.base_class("\u0364") == cs.index["e"]  # combining small e above
    assert cs.base_class("¬") == cs.index["-"]
    assert cs.base_class("Ж") is None
    probs = np.zeros((1, 6, cs.num_classes), dtype=np.float32)
    for t, c in enumerate([1, 1, 0, 1, 6, 2]):  # a a _ a ␠ b  → "aa b"
        probs[0, t, c] = 0.9
    ((text, conf),) = cs.decode_greedy(probs)
    assert text == "aa b" and abs(conf - 0.9) < 1e-6
    assert normalize_text(" a\n b ") == "a b"


def test_extension_keeps_shipped_predictions(shared_data):
    adapter = PPOCRAdapter.from_shipped()
    samples = real_lines(shared_data, per_set=3, sets=("gt4histocr_dta19_lines", "fondue_en_print20"))
    images = [s.image for s in samples]
    before = adapter.recognize(images)
    probs_before = adapter.probabilities(images[:2])
    n = adapter.charset.num_classes

    added = adapter.extend_charset(["Daß „er“ kam", "Fraktur e\u0364 und ſ und ¬ und Ж"])
    assert added == ["„", "\u0364", "Ж"]  # ß, ſ, ¬, “ are in the shipped list already
    assert adapter.charset.num_classes == n + 3 == adapter.core.config.head_out_channels
    head = adapter.core.head.head
    assert torch.equal(head.weight[n + 1], head.weight[adapter.charset.index["e"]])  # ͤ starts as e
    assert torch.allclose(head.weight[n + 2], head.weight[1:n].mean(0))  # Ж: no base → mean
    assert [p.text for p in adapter.recognize(images)] == [p.text for p in before]
    probs_after = adapter.probabilities(images[:2])[:, :, :n]
    assert np.abs(probs_after - probs_before).max() < 0.05  # new classes take little mass until trained
    assert adapter.extend_charset(["„ Ж"]) == []


def test_new_characters_train_and_survive_save_load(tmp_path):
    adapter = PPOCRAdapter.tiny_random("abcdefghijklmnopqrstuvwxyz", seed=1)
    assert adapter.extend_charset(["ſ"]) == ["ſ"]
    new = adapter.charset.index["ſ"]
    batch = adapter.collate(synthetic_samples(["ſa", "aſb", "ſſ c"]))
    assert new in batch["targets"].tolist()
    adapter.train_mode()
    opt = torch.optim.AdamW(adapter.model.parameters(), lr=5e-3)

    row_before = adapter.core.head.head.weight[new].detach().clone()
    losses = []
    for _ in range(4):
        loss = adapter.loss(batch)
        opt.zero_grad()
        loss.backward()
        assert adapter.core.head.head.weight.grad[new].abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(adapter.core.head.head.weight[new], row_before)

    adapter.save(tmp_path / "m")
    loaded = PPOCRAdapter.load(tmp_path / "m")
    assert loaded.charset.chars[-1] == "ſ" and loaded.added_chars == ["ſ"]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.logits(batch["pixel_values"]), adapter.logits(batch["pixel_values"])
        )


def test_pruning_drops_unused_scripts_and_keeps_the_rest_exact(tmp_path):
    adapter = PPOCRAdapter.tiny_random("ab中文한カ", seed=2)  # + space
    batch = adapter.collate(synthetic_samples(["ab", "ba a"]))
    with torch.no_grad():
        before = adapter.logits(batch["pixel_values"])
    keep = [0, 1, 2, 7]  # blank, a, b, space
    assert adapter.prune_charset(["一 中"]) == 0  # the texts use CJK: every class stays
    assert adapter.prune_charset(["ok 🙂"]) == 0
    assert adapter.prune_charset(["ab", "Ж"]) == 4  # 中 文 한 カ
    assert adapter.charset.chars == ["a", "b", " "] and adapter.core.config.head_out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(batch["pixel_values"]), before[:, :, keep])
    assert adapter.collate(synthetic_samples(["ab"]))["targets"].tolist() == [1, 2]
    adapter.save(tmp_path / "m")
    loaded = PPOCRAdapter.load(tmp_path / "m")
    assert loaded.charset.chars == ["a", "b", " "]
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(batch["pixel_values"]), before[:, :, keep])


def test_pruning_the_shipped_head_keeps_latin_reads(shared_data):
    adapter = PPOCRAdapter.from_shipped()
    samples = real_lines(shared_data, per_set=3, sets=("gt4histocr_dta19_lines", "fondue_en_print20"))
    before = [p.text for p in adapter.recognize([s.image for s in samples])]
    dropped = adapter.prune_charset(s.text for s in samples)
    assert dropped > 16_000 and adapter.charset.num_classes < 2_000
    assert "ſ" in adapter.charset and "中" not in adapter.charset
    assert [p.text for p in adapter.recognize([s.image for s in samples])] == before
