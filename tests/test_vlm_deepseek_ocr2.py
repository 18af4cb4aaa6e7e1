"""DeepSeek-OCR-2 specifics: prompts, image modes + token consistency, LoRA presets (experts via
target_parameters), the peft reload bug workaround (numerical), 8-bit loading, backends, gradient checkpointing."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from deepsynth.config import ConfigError  # noqa: E402
from deepsynth.data.sample import Sample, SampleError  # noqa: E402
from deepsynth.models.generation import GenerationConfig  # noqa: E402
from deepsynth.models.vlm import lora as lora_mod  # noqa: E402
from deepsynth.models.vlm.deepseek_ocr2 import (  # noqa: E402
    FREE_OCR,
    IMAGE_MODES,
    MARKDOWN,
    DeepseekOcr2Adapter,
    check_image_tokens,
)
from deepsynth.testing.tiny_models import build_tiny, tiny_checkpoint  # noqa: E402
from tests.vlm_helpers import line_image, line_samples, train_steps  # noqa: E402

REAL = {"processor_patch": 16, "downsample": 4, "sam_patch": 16}  # the released checkpoint's geometry
GEN = GenerationConfig(max_new_tokens=5)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("deepseek_ocr2")


# ---------------------------------------------------------------- prompts and labels
def test_prompts_and_aliases(tiny):
    assert tiny.prompt == FREE_OCR == "<image>\nFree OCR."
    assert (
        tiny.resolve_prompt("markdown")
        == MARKDOWN
        == "<image>\n<|grounding|>Convert the document to markdown."
    )
    assert tiny.resolve_prompt("Describe.") == "<image>\nDescribe."


def test_prompt_and_image_tokens_are_masked(tiny):
    batch = tiny.collate(line_samples(2))
    ids, labels = batch["input_ids"], batch["labels"]
    image_id = tiny.tokenizer.image_token_id
    assert (labels[ids == image_id] == -100).all()
    # every image token precedes the first supervised token, and padding is masked
    for row_ids, row_labels, mask in zip(ids, labels, batch["attention_mask"], strict=True):
        first = int((row_labels != -100).nonzero()[0])
        assert (row_ids[first:] != image_id).all()
        assert (row_labels[mask == 0] == -100).all()
        assert int(row_labels[(row_labels != -100)][-1]) == tiny.tokenizer.eos_token_id


def test_empty_answer_rejected_and_all_masked_batch_refused(tiny):
    with pytest.raises(SampleError, match="empty"):
        tiny.collate([Sample.from_image("blank", line_image("x"), "  ")])
    batch = tiny.collate(line_samples(1))
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="no supervised label"):
        tiny.loss(batch)


def test_too_long_sample_names_the_sample():
    ad = build_tiny("deepseek_ocr2", max_length=150)  # 145 image+prompt tokens leave room for ~5
    with pytest.raises(SampleError, match="line1.*max_length=150"):
        ad.collate(
            [Sample.from_image("line1", line_image("a long line of text here"), "a long line of text here")]
        )


# ---------------------------------------------------------------- image modes
def test_released_model_modes_consistent():
    assert check_image_tokens(*vars(IMAGE_MODES["base"]).values(), **REAL) == 256
    assert check_image_tokens(*vars(IMAGE_MODES["gundam"]).values(), **REAL) == 256


@pytest.mark.parametrize("mode", ["tiny", "small", "large"])
def test_v1_only_modes_raise_clear_error(mode):
    m = IMAGE_MODES[mode]
    with pytest.raises(ValueError, match=r"image mode mismatch.*base, gundam.*deepseek_ocr family"):
        check_image_tokens(m.base_size, m.image_size, m.crop_mode, **REAL)


def test_generation_mode_override_is_checked(tiny):
    with pytest.raises(ValueError, match="emits 144 query tokens"):
        tiny.recognize([line_image("x")], GenerationConfig(max_new_tokens=2, base_size=128))


def test_gundam_tiles_plus_global_view():
    ad = build_tiny("deepseek_ocr2", image_mode="gundam")  # tiny scale: 96 px global view + 96 px tiles
    batch = ad.collate([Sample.from_image("wide", line_image("wide line", 300, 40), "wide line")])
    n_tiles = int(batch["num_local_patches"][0])
    assert n_tiles >= 2 and batch["pixel_values_local"].shape[0] == n_tiles
    n_image = int((batch["input_ids"] == ad.tokenizer.image_token_id).sum())
    assert n_image == 144 * (n_tiles + 1) + 1  # tiles + global view + view separator
    assert torch.isfinite(ad.loss(batch))
    assert len(ad.recognize([line_image("wide line", 300, 40)], GEN)) == 1


# ---------------------------------------------------------------- LoRA presets
def _lora_names(ad):
    return [n for n, p in ad.model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize(
    "preset, vision, experts",
    [("language_model", False, False), ("language-model+experts", False, True), ("all_linear", True, False)],
)
def test_lora_presets(preset, vision, experts):
    ad = build_tiny("deepseek_ocr2")
    ad.apply_lora({"r": 2, "alpha": 4, "targets": preset})
    names = _lora_names(ad)
    assert any("language_model" in n for n in names)
    assert any("vision_tower" in n for n in names) == vision
    assert any("mlp.experts" in n for n in names) == experts


def test_unknown_preset_lists_the_known_ones(tiny):
    with pytest.raises(ConfigError, match="known: all-linear.*language-model"):
        lora_mod.resolve_lora({"preset": "vision_only"}, tiny.lora_presets, "deepseek_ocr2")


# ---------------------------------------------------------------- the peft reload bug, numerically
def test_reload_keeps_every_language_model_lora_weight(tmp_path):
    ad = build_tiny("deepseek_ocr2")
    batch = ad.collate(line_samples(2))
    ad.apply_lora({"r": 4, "alpha": 8, "preset": "language_model+experts"})
    train_steps(ad, batch, steps=3)
    trained = ad.logits(batch)
    base_logits = build_tiny("deepseek_ocr2").logits(batch)
    assert (trained - base_logits).abs().max() > 1e-3  # training moved the model
    ad.save(tmp_path / "run")

    reloaded = DeepseekOcr2Adapter.load(tmp_path / "run")
    assert (reloaded.logits(batch) - trained).abs().max().item() == 0.0

    # what plain peft does on transformers 5.23 + peft 0.21.2 (informational: the bug DeepSynth avoids)
    from peft import PeftModel

    plain = build_tiny("deepseek_ocr2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about "missing adapter keys" there
        plain.model = PeftModel.from_pretrained(plain.model, str(tmp_path / "run" / "adapter"))
    plain_diff = (plain.logits(batch) - trained).abs().max().item()
    print(f"plain PeftModel.from_pretrained logit difference: {plain_diff:.4g}")


def test_reload_refuses_mismatched_adapter(tmp_path):
    from safetensors.torch import load_file, save_file

    ad = build_tiny("deepseek_ocr2")
    ad.apply_lora({"r": 2, "alpha": 4, "preset": "language_model"})
    ad.save(tmp_path / "run")
    f = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    state = load_file(str(f))
    state.pop(next(iter(state)))
    save_file(state, str(f))
    with pytest.raises(RuntimeError, match="not in the file"):
        DeepseekOcr2Adapter.load(tmp_path / "run")


# ---------------------------------------------------------------- loading options
def test_8bit_loading_skips_the_vision_tower():
    pytest.importorskip("bitsandbytes")
    ad = build_tiny("deepseek_ocr2", quantization="8bit")
    assert ad.model.is_loaded_in_8bit
    import bitsandbytes as bnb

    q = [n for n, m in ad.model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert q and not any("vision_tower" in n for n in q)
    assert len(ad.recognize([line_image("abc")], GEN)) == 1


def test_attn_implementation_and_gradient_checkpointing_keep_the_numbers():
    path = str(tiny_checkpoint("deepseek_ocr2"))
    batch = None
    losses = {}
    for name, opts in {
        "sdpa": {"attn_implementation": "sdpa"},
        "eager": {"attn_implementation": "eager"},
        "gc": {"gradient_checkpointing": True},
    }.items():
        ad = DeepseekOcr2Adapter.from_pretrained(path, **opts)
        batch = batch or ad.collate(line_samples(2))
        ad.train_mode()
        loss = ad.loss(batch)
        loss.backward()
        losses[name] = float(loss.detach())
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-4)
    assert losses["gc"] == pytest.approx(losses["sdpa"], abs=1e-5)


def test_backend_choice_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert lora_mod.resolve_backend("auto") == "peft"
    with pytest.raises(RuntimeError, match="unsloth.*unavailable.*CUDA"):
        lora_mod.resolve_backend("unsloth")
    ad = build_tiny("deepseek_ocr2", backend="unsloth")
    with pytest.raises(RuntimeError, match="unsloth"):
        ad.apply_lora({"r": 2})


@pytest.mark.gpu
def test_unsloth_fast_vision_model_path():
    ok, why = lora_mod.unsloth_available()
    if not ok:
        pytest.skip(f"Unsloth backend not available here: {why}")
    assert lora_mod.resolve_backend("auto") == "unsloth"  # pragma: no cover - GPU machines only


# ---------------------------------------------------------------- smoke model choice, v1, memory
def test_smoke_spec_uses_env_checkpoint(monkeypatch):
    from deepsynth.models.registry import load_engine

    monkeypatch.delenv("DEEPSYNTH_SMOKE_MODEL", raising=False)
    assert load_engine("deepseek_ocr2:smoke").source["kind"] == "tiny"
    path = str(tiny_checkpoint("deepseek_ocr2"))
    monkeypatch.setenv("DEEPSYNTH_SMOKE_MODEL", path)  # a real checkpoint directory (here: a saved tiny one)
    ad = load_engine("deepseek_ocr2:smoke")
    assert ad.source == {"kind": "pretrained", "ref": path}


def test_deepseek_ocr_v1_needs_explicit_trust_remote_code():
    from deepsynth.models.registry import load_engine

    with pytest.raises(ValueError, match="trust_remote_code=true.*network access"):
        load_engine("deepseek_ocr:deepseek-ai/DeepSeek-OCR")


def test_memory_estimate_counts_real_parameters(tiny):
    from deepsynth.models.vlm.memory import estimate

    est = estimate(tiny.model.config, lora_r=4)
    assert est["parameters"]["total"] == sum(p.numel() for p in tiny.model.parameters())
    lora = build_tiny("deepseek_ocr2")
    lora.apply_lora({"r": 4, "alpha": 8, "preset": "language_model"})
    assert est["lora_parameters"] == sum(p.numel() for p in lora.trainable_parameters())


def test_export_merged_with_parity_report(tmp_path):
    import json

    from deepsynth.models.vlm.export import export_merged, probe_samples

    ad = build_tiny("deepseek_ocr2")
    ad.apply_lora({"r": 4, "alpha": 8, "preset": "language_model+experts"})
    train_steps(ad, ad.collate(probe_samples()), steps=2)
    ad.save(tmp_path / "run")
    report = export_merged(tmp_path / "run", tmp_path / "merged")
    assert report["ok"] and report["max_abs_diff_exported_vs_trained"] < 1e-4
    assert json.loads((tmp_path / "merged" / "parity.json").read_text())["ok"]
    card = json.loads((tmp_path / "merged" / "deepsynth_model.json").read_text())
    assert card["format"] == "full" and (tmp_path / "merged" / "config.json").is_file()
    with pytest.raises(ValueError, match="no LoRA"):
        export_merged(tmp_path / "merged", tmp_path / "again")


def test_grounding_output_becomes_text_and_regions():
    from deepsynth.models.vlm.deepseek_ocr2 import parse_grounding

    raw = (
        "<|ref|>title<|/ref|><|det|>[[10, 20, 500, 60]]<|/det|>\n# Report\n\n"
        "<|ref|>text<|/ref|><|det|>[[10, 80, 990, 200], [10, 210, 990, 260]]<|/det|>\nFirst paragraph.\n"
    )
    text, regions = parse_grounding(raw)
    assert text == "# Report\n\n\nFirst paragraph."
    assert [r["type"] for r in regions] == ["title", "text"]
    assert regions[0]["boxes"] == [[10, 20, 500, 60]] and regions[1]["text"] == "First paragraph."
    assert parse_grounding("plain text ") == ("plain text", [])


def test_non_native_checkpoint_gets_a_hint(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_vl_v2_remote"}))
    with pytest.raises(ValueError, match="transformers-native checkpoint"):
        DeepseekOcr2Adapter.from_pretrained(str(tmp_path))
