"""LoRA on the PP-OCR recogniser: targets, only adapters train, save/load gives identical logits."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from deepsynth.models.ppocr.adapter import PPOCRAdapter
from deepsynth.models.ppocr.lora import resolve_targets
from tests.ppocr_helpers import synthetic_samples


def lora_settings(targets="all-linear", r=4):
    return SimpleNamespace(enabled=True, r=r, alpha=8, dropout=0.0, targets=targets, preset=None)


def train(adapter: PPOCRAdapter, batch: dict, steps: int = 4) -> list[float]:
    adapter.train_mode()
    opt = torch.optim.AdamW([p for p in adapter.model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = adapter.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    adapter.eval_mode()
    return losses


def test_presets_pick_linear_and_dense_convs():
    core = PPOCRAdapter.tiny_random("abc").core
    linear = resolve_targets(core, "linear")
    pointwise = resolve_targets(core, "all-linear")
    everything = resolve_targets(core, "all")
    assert "head.head" in linear and all("conv" not in n for n in linear)
    assert set(linear) < set(pointwise) < set(everything)
    assert all(core.get_submodule(n).groups == 1 for n in everything if "conv" in n)  # no depthwise convs
    assert resolve_targets(core, ["qkv"]) == ["qkv"]


def test_lora_trains_only_adapters_and_reloads_identically(tmp_path):
    adapter = PPOCRAdapter.tiny_random("abcdefghijklmnopqrstuvwxyz ", seed=2)
    base_head = adapter.core.head.head.weight.detach().clone()
    adapter.apply_lora(lora_settings())
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = adapter.collate(synthetic_samples(["abc de", "fgh", "lora works"]))
    with torch.no_grad():
        untrained = adapter.logits(batch["pixel_values"])
    losses = train(adapter, batch)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        trained = adapter.logits(batch["pixel_values"])
    assert not torch.allclose(trained, untrained)
    assert torch.equal(adapter.core.head.head.base_layer.weight, base_head)  # base frozen

    adapter.save(tmp_path / "m")
    assert (tmp_path / "m" / "lora" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "m" / "deepsynth_model.json").read_text())["lora"]["r"] == 4
    loaded = PPOCRAdapter.load(tmp_path / "m")
    assert not any(m.training for m in loaded.model.modules())  # loaded for inference
    with torch.no_grad():
        assert torch.equal(loaded.logits(batch["pixel_values"]), trained)
    # the saved base is the untouched base model, the adapter sits on top of it
    plain = PPOCRAdapter.tiny_random("abcdefghijklmnopqrstuvwxyz ", seed=2)
    assert torch.equal(loaded.core.head.head.base_layer.weight, plain.core.head.head.weight)

    loaded.merge_lora()
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(batch["pixel_values"]), trained, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="already applied"):
        adapter.apply_lora(lora_settings())


def test_lora_after_charset_extension_trains_the_classifier(tmp_path):
    adapter = PPOCRAdapter.tiny_random("abcdefghijklmnopqrstuvwxyz ", seed=3)
    adapter.extend_charset("ſ")
    adapter.apply_lora(lora_settings("linear"))
    names = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert any("head.head.modules_to_save" in n for n in names)
    batch = adapter.collate(synthetic_samples(["ſa", "bſ c"]))
    train(adapter, batch, steps=3)
    with torch.no_grad():
        trained = adapter.logits(batch["pixel_values"])
    adapter.save(tmp_path / "m")
    loaded = PPOCRAdapter.load(tmp_path / "m")
    assert loaded.charset.chars[-1] == "ſ"
    with torch.no_grad():
        assert torch.equal(loaded.logits(batch["pixel_values"]), trained)
    with pytest.raises(RuntimeError, match="before applying LoRA"):
        loaded.extend_charset("ж")
