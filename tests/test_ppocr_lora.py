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
    assert resolve_targets(core, "all_linear") == pointwise  # one spelling table: "_" reads as "-"
    assert set(resolve_targets(core, "conv")) == set(everything) - set(linear)


def test_one_preset_table_for_ppocr_and_vlm_families():
    """Same names, same unknown-preset error, same default rank on the PP-OCR and VLM sides."""
    from deepsynth.config import ConfigError
    from deepsynth.models.lora_presets import DEFAULT_RANK, PRESETS
    from deepsynth.models.ppocr.lora import PRESETS as PPOCR_PRESETS
    from deepsynth.models.vlm import adapter_classes
    from deepsynth.models.vlm.lora import resolve_lora
    from deepsynth.training.config import LoraSettings

    offered = [PPOCR_PRESETS, *(cls.lora_presets for cls in adapter_classes().values())]
    assert all(set(p) <= set(PRESETS) and "all-linear" in p for p in offered)
    core = PPOCRAdapter.tiny_random("abc").core
    vlm_presets = adapter_classes()["qwen3_vl"].lora_presets
    for bad in ("vision_only", r"head\..*"):  # never passed on as a regex
        with pytest.raises(ConfigError, match=f"unknown LoRA preset {bad!r}.*known: all, all-linear"):
            resolve_targets(core, bad)
        with pytest.raises(ConfigError, match=f"unknown LoRA preset {bad!r}.*known: all-linear"):
            resolve_lora({"preset": bad}, vlm_presets, "qwen3_vl")
    assert LoraSettings().r == resolve_lora({}, vlm_presets, "qwen3_vl").r == DEFAULT_RANK
    assert resolve_lora({"targets": "all_linear"}, vlm_presets, "qwen3_vl").preset == "all-linear"


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
