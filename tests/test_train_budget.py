"""Time budgets that plan the run, augmentation that is seeded, and splits that drop no labelled data."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from deepsynth.config import ConfigError
from deepsynth.data.line_augment import LineAugment
from deepsynth.training.budget import StepPlan, every, warmup_steps
from deepsynth.training.config import DataSettings
from deepsynth.training.data import BatchPlan, describe_split, epoch_loader, load_split, small_validation
from tests._train_data import EXAMPLES, real_lines, tiny_adapter
from tests.test_train import run


def test_plan_keeps_a_reserve_for_the_final_evaluation_and_save():
    plan = StepPlan(limit=None, budget_s=100.0, t_start=time.perf_counter() - 10.0, safety=0.0)
    for _ in range(5):
        plan.record_step(1.0)
    plan.eval_s, plan.save_s = 5.0, 1.0
    total = plan.replan(step=5, evals_left=2)
    # 100 s - 10 s elapsed - (5 s eval + 3 saves) - 2 evals x 5 s = 72 s of steps at 1 s each
    assert total in (5 + 71, 5 + 72)
    capped = StepPlan(limit=40, budget_s=100.0, t_start=time.perf_counter() - 10.0, safety=0.0)
    capped.record_step(1.0)
    assert capped.replan(step=1) == 40  # max_steps / epochs still cap a budgeted run
    assert not plan.out_of_time()
    late = StepPlan(limit=None, budget_s=100.0, t_start=time.perf_counter() - 93.0, safety=0.0)
    late.eval_s = 5.0
    assert late.out_of_time()  # 93 s + 5 s eval + 3 saves > 100 s: stop and leave time to finish


def test_cadences_follow_the_plan():
    assert every(200, 8, 50) == 25 and every(None, 8, 50) == 50 and every(40, None, 10) == 10
    assert warmup_steps(200, 0.05, 50) == 10 and warmup_steps(200, 0.0, 50) == 50


def test_time_budget_covers_evaluation_and_save(tmp_path, caplog):
    """A run with only a time budget warms up, validates several times, saves, and finishes on time."""
    lines = real_lines(12)
    budget_min = 0.4
    with caplog.at_level(logging.INFO, logger="deepsynth.training"):
        result, trainer = run(
            tmp_path, f"max_minutes={budget_min}", "optim.warmup_ratio=0.1", "eval.times=3",
            "eval.at_start=true", "checkpoint.times=2", "optim.lr=1e-3",
            samples=lines[:8], eval_samples=lines[8:],
        )  # fmt: skip
    assert result.stopped == "time budget"
    assert result.wall_seconds <= budget_min * 60 * 1.25  # stopped early enough to evaluate and save in time
    assert len(result.evals) >= 3  # at start, during the run, at the end
    assert result.best_dir and result.final_dir
    assert trainer.scheduler.lr_lambdas[0].warmup == max(1, round(0.1 * trainer.total_steps))
    assert any("time budget" in r.message for r in caplog.records)


def test_split_holds_out_validation_and_drops_nothing():
    d = DataSettings(train=[str(EXAMPLES)], split_key="subset")
    train, val = load_split(d, "train", _report()), load_split(d, "eval", _report())
    every_sample = load_split(DataSettings(train=[str(EXAMPLES)], train_split=None), "train", _report())
    assert len(train) + len(val) == len(every_sample)  # no silent test share
    assert not {s.subset for s in train} & {s.subset for s in val}
    assert "train / " in describe_split(d, len(train), len(val))
    with_eval = DataSettings(train=[str(EXAMPLES)], eval=[str(EXAMPLES)])
    assert len(load_split(with_eval, "train", _report())) == len(
        every_sample
    )  # all of data.train is trained on
    three = DataSettings(train=[str(EXAMPLES)], split_ratios=(0.8, 0.1, 0.1))
    assert "never uses" in describe_split(three, 10, 2)


def _report():
    from deepsynth.data import DataReport

    return DataReport()


def test_augmentation_is_seeded_and_changes_the_images():
    lines = real_lines(4)
    adapter = tiny_adapter(lines)
    plan = BatchPlan(len(lines), 4, seed=3)
    aug = LineAugment(p=1.0)

    def first_batch(augment):
        batch, skipped, _ = next(iter(epoch_loader(lines, plan, 0, 0, adapter.collate, 0, augment)))
        assert not skipped
        return batch["pixel_values"].numpy()

    a, b, plain = first_batch(aug), first_batch(aug), first_batch(None)
    assert np.array_equal(a, b)  # same seed, epoch and sample: the same augmented pixels (resume-safe)
    assert a.shape != plain.shape or not np.array_equal(a, plain)
    other_epoch = next(iter(epoch_loader(lines, plan, 1, 0, adapter.collate, 0, aug)))[0]["pixel_values"]
    assert other_epoch.shape != a.shape or not np.array_equal(other_epoch.numpy(), a)


def test_augment_settings_are_validated():
    with pytest.raises(ConfigError, match="augment.shear"):
        LineAugment(shear=1.5)
    assert not LineAugment.off().enabled


def test_learning_curve_writes_points_and_plot(tmp_path):
    """Two sizes on the tiny model: curve.json with CIs per point, a PNG and an HTML page."""
    from deepsynth.training.experiment import HeldOut
    from deepsynth.training.learning_curve import _write, subsample

    lines = real_lines(12)
    split = HeldOut(lines[:8], lines[8:10], lines[10:], key="subset")
    assert len(subsample(split, 4, seed=0).train) == 4 and subsample(split, None, 0).train == split.train
    assert subsample(split, 4, 0).train == subsample(split, 4, 0).train  # seeded
    point = {"before": {"cer": 0.5, "cer_ci": [0.4, 0.6]}, "after": {"cer": 0.2, "cer_ci": [0.1, 0.3]},
             "train": {"steps": 3}}  # fmt: skip
    result = _write(tmp_path, ["x"], "subset", 1.0, [{"n_train": 4, **point}, {"n_train": 8, **point}])
    assert json.loads((tmp_path / "curve.json").read_text())["points"][1]["n_train"] == 8
    assert (tmp_path / "curve.png").stat().st_size > 1000 and "<table" in (
        tmp_path / "curve.html"
    ).read_text()
    assert result["split_key"] == "subset"


def test_identity_batchnorms_as_bias_adds_keep_outputs_and_freeze_works(tmp_path):
    """The memory-saving BatchNorm path gives the same logits; model.freeze stops the named parameters."""
    import torch

    from deepsynth.models.ppocr.adapter import PPOCRAdapter
    from deepsynth.models.ppocr.frozen_norm import identity_norms_as_bias
    from deepsynth.training.runtime import freeze_parameters

    adapter = PPOCRAdapter.from_shipped()
    batch = adapter.collate(real_lines(2))
    with torch.no_grad():
        before = adapter.logits(batch["pixel_values"])
    n = identity_norms_as_bias(adapter.model)
    assert n >= 30  # the converter's folded-bias BatchNorms (the neck's real ones are left alone)
    with torch.no_grad():
        after = adapter.logits(batch["pixel_values"])
    assert torch.allclose(before, after, atol=1e-4)
    adapter.train_mode()
    stem = "model.backbone.encoder.convolution"
    frozen = freeze_parameters(adapter.model, [stem])
    assert frozen > 0
    assert all(not p.requires_grad for name, p in adapter.model.named_parameters() if name.startswith(stem))
    adapter.loss(batch).backward()
    assert all(p.grad is None for name, p in adapter.model.named_parameters() if name.startswith(stem))
    head = [p for name, p in adapter.model.named_parameters() if name.startswith("head.")]
    assert all(p.grad is not None for p in head)
    with pytest.raises(ConfigError, match="no parameter under 'backbone.nope'"):
        freeze_parameters(adapter.model, ["backbone.nope"])


def test_held_out_splits_lines_by_group_and_never_leaves_a_share_empty(shared_data):
    """20 pages of print: page rows are left out, and validation/test get whole pages even with so few."""
    from deepsynth.training.experiment import held_out

    split = held_out([str(shared_data / "fondue_en_print20")], key="page_id")
    assert split.train and split.val and split.test
    assert all(s.level == "line" for s in split.train + split.val + split.test)
    pages = [{s.meta["page_id"] for s in part} for part in (split.train, split.val, split.test)]
    assert not (pages[0] & pages[1] or pages[0] & pages[2] or pages[1] & pages[2])
    again = held_out([str(shared_data / "fondue_en_print20")], key="page_id")
    assert [s.id for s in again.test] == [s.id for s in split.test]  # seeded: the same split every time


def test_small_validation_sets_are_flagged():
    assert small_validation(0) is None and small_validation(100) is None and small_validation(400) is None
    assert "only 21 validation samples" in small_validation(21)
