"""One lifecycle, every VLM family (peft-tester-mixin style), on tiny random-weight models.

build tiny → a few LoRA steps lower the loss → generate → save → reload → identical logits →
merge → identical generations → merged save_pretrained → plain transformers reload; plus a QLoRA step.
Each family's model is trained once (class-scoped fixture) and shared by the checks.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from deepsynth.models.generation import GenerationConfig  # noqa: E402
from deepsynth.models.registry import MODEL_CARD, load_engine  # noqa: E402
from deepsynth.models.vlm import adapter_class  # noqa: E402
from deepsynth.testing.tiny_models import FAMILIES, build_tiny  # noqa: E402
from tests.vlm_helpers import line_samples, train_steps  # noqa: E402

GEN = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tmp_path_factory):
    family = request.param
    adapter = build_tiny(family, seed=0)
    samples = line_samples(2)
    batch = adapter.collate(samples)
    torch.manual_seed(0)  # LoRA A matrices are drawn from the global RNG
    adapter.apply_lora({"r": 4, "alpha": 8, "preset": "language_model"})
    losses = train_steps(adapter, batch, steps=5)
    out = tmp_path_factory.mktemp(f"vlm-{family}")
    adapter.save(out / "lora")
    return {
        "family": family,
        "adapter": adapter,
        "batch": batch,
        "samples": samples,
        "losses": losses,
        "dir": out,
        "logits": adapter.logits(batch),
        "generations": [p.text for p in adapter.recognize([s.image for s in samples], GEN)],
    }


class TestVLMFamily:
    def test_lora_steps_lower_the_loss(self, trained):
        losses = trained["losses"]
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0], losses

    def test_only_lora_parameters_train(self, trained):
        model = trained["adapter"].model
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n for n in names)

    def test_labels_mask_everything_but_the_answer(self, trained):
        ad, batch = trained["adapter"], trained["batch"]
        for i, sample in enumerate(trained["samples"]):
            supervised = batch["labels"][i][batch["labels"][i] != -100].tolist()
            expected = ad.tokenizer(sample.text, add_special_tokens=False)["input_ids"] + ad.end_token_ids()
            assert supervised == expected

    def test_generate_batch(self, trained):
        ad, samples = trained["adapter"], trained["samples"]
        preds = ad.recognize([s.image for s in samples], GEN)
        assert len(preds) == 2
        for p in preds:
            assert isinstance(p.text, str) and p.finished in (True, False)
            assert 0 <= p.num_tokens <= GEN.max_new_tokens
            assert 0.0 < p.confidence <= 1.0
        # a batch reads each image as if alone (left padding does not leak between rows)
        alone = ad.recognize([samples[1].image], GEN)[0].text
        assert alone == preds[1].text

    def test_save_reload_identical_logits(self, trained):
        family = trained["family"]
        card = json.loads((trained["dir"] / "lora" / MODEL_CARD).read_text())
        assert card["family"] == family and card["format"] == "lora"
        reloaded = load_engine(str(trained["dir"] / "lora"))  # registry recognises the saved directory
        assert type(reloaded) is adapter_class(family)
        diff = (reloaded.logits(trained["batch"]) - trained["logits"]).abs().max().item()
        assert diff == 0.0, f"{family}: reloaded adapter differs from the trained one by {diff}"

    def test_merge_then_plain_transformers_reload(self, trained):
        family = trained["family"]
        ad = adapter_class(family).load(trained["dir"] / "lora")
        ad.merge()
        assert not ad.has_lora
        merged_diff = (ad.logits(trained["batch"]) - trained["logits"]).abs().max().item()
        assert merged_diff < 1e-4, f"{family}: merged vs unmerged logits differ by {merged_diff}"
        assert [p.text for p in ad.recognize([s.image for s in trained["samples"]], GEN)] == trained[
            "generations"
        ]
        out = trained["dir"] / "merged"
        ad.save(out)
        plain = ad.model_class().from_pretrained(str(out))  # plain transformers, no DeepSynth, no peft
        assert not hasattr(plain, "peft_config")
        ad.model = plain
        assert [p.text for p in ad.recognize([s.image for s in trained["samples"]], GEN)] == trained[
            "generations"
        ]
        assert (ad.logits(trained["batch"]) - trained["logits"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_4bit_step_on_cpu(family):
    pytest.importorskip("bitsandbytes")
    ad = build_tiny(family, quantization="4bit")
    assert ad.model.is_loaded_in_4bit
    ad.apply_lora({"r": 4, "alpha": 8, "preset": "language_model"})
    batch = ad.collate(line_samples(2))
    lora = {n: p.detach().clone() for n, p in ad.model.named_parameters() if p.requires_grad}
    losses = train_steps(ad, batch, steps=1)
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [n for n, p in ad.model.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert changed, "no LoRA weight moved in a QLoRA step"


def test_registry_builds_tiny_for_every_family():
    for family in FAMILIES:
        ad = load_engine(f"{family}:tiny")
        assert ad.family == family and ad.name == f"{family}:tiny"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "lighton_ocr"])
def test_checkpoint_chat_template_is_used_when_present(family):
    ad = build_tiny(family)
    plain = ad.prompt_text("Read it.")
    image = plain.split("user\n", 1)[1].split("Read it.")[0]  # the image markup of this family
    ad.processor.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}"
        "{% if c.type == 'image' %}" + image + "{% else %}{{ c.text }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert ad.prompt_text("Read it.") == plain
    ad.processor.chat_template = ad.processor.chat_template.replace(
        "<|im_start|>assistant", "<|im_start|>bot"
    )
    assert ad.prompt_text("Read it.").endswith("<|im_start|>bot\n")
