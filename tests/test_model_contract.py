"""The ModelAdapter contract, run over every trainable family (docTR-style): collate → finite loss →
one optimizer step → save → load → identical logits. PP-OCR is the tiny random recogniser; the VLM families
are tiny random models built from their real transformers configs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deepsynth.models.base import ModelAdapter  # noqa: E402
from deepsynth.models.generation import GenerationConfig  # noqa: E402
from deepsynth.models.ppocr.adapter import PPOCRAdapter  # noqa: E402
from deepsynth.testing.tiny_models import FAMILIES, build_tiny  # noqa: E402
from deepsynth.training.runtime import ensure_trainable  # noqa: E402
from tests.vlm_helpers import TEXTS, line_samples  # noqa: E402


def build(family: str) -> ModelAdapter:
    if family == "ppocr":
        return PPOCRAdapter.tiny_random("".join(sorted(set("".join(TEXTS)))), seed=0)
    return build_tiny(family, seed=0)


def logits(adapter: ModelAdapter, batch: dict) -> torch.Tensor:
    """The family's raw output for a collated batch (PP-OCR: CTC logits; VLMs: token logits)."""
    if isinstance(adapter, PPOCRAdapter):
        adapter.eval_mode()
        with torch.no_grad():
            return adapter.logits(batch["pixel_values"])
    return adapter.logits(batch)


@pytest.mark.parametrize("family", ["ppocr", *FAMILIES])
def test_collate_loss_save_load_gives_identical_logits(family, tmp_path):
    adapter = build(family)
    assert isinstance(adapter, ModelAdapter)
    batch = adapter.collate(line_samples(2))
    adapter.train_mode()
    loss = adapter.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss), f"{family}: loss {loss}"
    loss.backward()
    with torch.no_grad():  # one step, so the saved weights are not the seeded initial ones
        for p in adapter.model.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
    before = logits(adapter, batch)
    adapter.save(tmp_path / "model")
    reloaded = type(adapter).load(tmp_path / "model")
    after = logits(reloaded, reloaded.collate(line_samples(2)))
    assert before.shape == after.shape
    assert torch.equal(before, after), f"{family}: max |Δ| {(before - after).abs().max()}"
    images, gen = [s.image for s in line_samples(2)], GenerationConfig(max_new_tokens=8)
    assert [p.text for p in reloaded.recognize(images, gen)] == [
        p.text for p in adapter.recognize(images, gen)
    ]


class _NoLora(ModelAdapter):
    """The smallest adapter: only the abstract methods (no LoRA, no charset, no preparation)."""

    name = family = "linear"

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)

    def recognize(self, images, generation=None):
        return []

    def collate(self, samples):
        return {}

    def loss(self, batch):
        return self.model.weight.sum()

    def save(self, path):
        pass

    @classmethod
    def load(cls, path, **kwargs):
        return cls()


def test_hooks_have_no_op_defaults_and_lora_is_refused_by_name():
    ad = _NoLora()
    assert ad.extend_charset(["abc"]) == []
    ad.prepare_for_training(None)
    ad.model.eval()
    ad.train_mode()
    assert ad.model.training
    assert ad.to("cpu") is ad
    with pytest.raises(TypeError, match="'linear' does not support LoRA"):
        ad.apply_lora({"r": 4})


def test_trainer_refuses_an_engine_that_is_not_a_model_adapter():
    from deepsynth.models.baselines.tesseract_engine import TesseractEngine

    with pytest.raises(TypeError, match="'tesseract' is not trainable"):
        ensure_trainable(TesseractEngine.__new__(TesseractEngine), "tesseract")


def test_model_and_data_layers_import_no_higher_layer_or_test_builders():
    import ast
    from pathlib import Path

    import deepsynth

    root = Path(deepsynth.__file__).parent
    higher = ("training", "evaluation", "inference", "cli", "testing", "loop", "scale")
    layers = [["deepsynth", h] for h in higher]
    bad = []
    for path in [*root.glob("models/**/*.py"), *root.glob("data/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[:2] in layers]
    assert not bad


def test_one_family_table_feeds_the_vlm_package_and_the_tiny_builders():
    from deepsynth.models.registry import vlm_families
    from deepsynth.models.vlm import adapter_classes
    from deepsynth.testing import tiny_models

    assert list(adapter_classes()) == vlm_families() == list(FAMILIES)
    assert set(tiny_models._BUILDERS) == set(vlm_families())
    assert all(cls.family == name for name, cls in adapter_classes().items())
