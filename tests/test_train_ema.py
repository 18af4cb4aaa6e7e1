"""Moving average of the weights (``ema.decay``): the update with its warm-up, the swap, and the trainer's use of
it for validation and the best/final models (tiny PP-OCRv6, real Fraktur lines). Resume: test_train.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepsynth.config import ConfigError, load_config
from deepsynth.models.registry import load_engine
from deepsynth.training import checkpoint as ckpt
from deepsynth.training.config import TrainConfig
from deepsynth.training.ema import WeightEMA
from tests._train_data import real_lines, tiny_adapter
from tests.test_train import run

ROOT = Path(__file__).resolve().parents[1]


def test_update_warms_up_and_swap_exchanges_in_place():
    trains, frozen = (
        torch.nn.Parameter(torch.zeros(2)),
        torch.nn.Parameter(torch.ones(2), requires_grad=False),
    )
    ema = WeightEMA([("w", trains)], decay=0.5)
    seen = []
    for value in (1.0, 2.0, 3.0):  # decays min(0.5, (1+n)/(10+n)) = 1/10, 2/11, 3/12
        seen.append(round(ema.current_decay(), 4))
        trains.data.fill_(value)
        ema.update()
    assert seen == [0.1, 0.1818, 0.25]
    # 0.1*0 + 0.9*1 = 0.9;  (2/11)*0.9 + (9/11)*2 = 1.8;  0.25*1.8 + 0.75*3 = 2.7
    assert torch.allclose(ema.shadow["w"], torch.full((2,), 2.7))
    assert ema.current_decay() == pytest.approx(4 / 13)  # still warming up: (1+3)/(10+3) < 0.5
    ema.updates = 8
    assert ema.current_decay() == 0.5  # (1+8)/(10+8) = 0.5: the warm-up is over
    ema.updates = 3
    storage = trains.data_ptr()
    with ema.swapped():
        assert torch.allclose(trains, torch.full((2,), 2.7)) and trains.data_ptr() == storage
        with ema.swapped():  # nested: stays swapped in
            assert torch.allclose(trains, torch.full((2,), 2.7))
        with pytest.raises(RuntimeError, match="swapped"):
            ema.update()
    assert torch.equal(trains, torch.full((2,), 3.0)) and torch.equal(frozen, torch.ones(2))

    again = WeightEMA([("w", torch.nn.Parameter(torch.zeros(2)))], decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and torch.equal(again.shadow["w"], ema.shadow["w"]) and again.decay == 0.9
    with pytest.raises(ValueError, match=r"missing \['w'\], unexpected \['v'\]"):
        again.load_state_dict({"updates": 1, "shadow": {"v": torch.zeros(2)}})


def test_config_validates_decay_and_the_recipe_averages():
    for bad in ("1", "1.5", "-0.1", "nan"):
        with pytest.raises(ConfigError, match=r"ema\.decay must be in \[0, 1\)"):
            load_config(TrainConfig, None, [f"ema.decay={bad}"])
    assert load_config(TrainConfig, None, ["ema.decay=0.999"]).ema.decay == 0.999
    assert load_config(TrainConfig, ROOT / "configs" / "ppocr_finetune.yaml").ema.decay == 0.99
    assert load_config(TrainConfig, None, []).ema.decay == 0.0  # off unless a recipe asks


def _weights(model: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def test_training_averages_the_weights_as_expected(tmp_path, caplog):
    """The trainer's average after 4 steps equals the average computed by hand from the recorded weights."""
    adapter = tiny_adapter(real_lines(8))
    init = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    history: list[dict[str, torch.Tensor]] = []
    caplog.set_level("INFO", logger="deepsynth.training.trainer")
    result, trainer = run(
        tmp_path, "max_steps=4", "optim.lr=1e-2", "ema.decay=0.6", adapter=adapter,
        callbacks=[lambda t: history.append(_weights(t.adapter.model, t.ema.params))],
    )  # fmt: skip
    names = list(trainer.ema.params)
    assert result.steps == 4 and len(history) == 4 and trainer.ema.updates == 4
    assert len(names) == sum(p.requires_grad for p in trainer.adapter.model.parameters())
    expected = {n: init[n].double() for n in names}
    for k, weights in enumerate(history):
        d = min(0.6, (1 + k) / (10 + k))  # 0.1, 0.1818, 0.25, 0.3077
        expected = {n: d * expected[n] + (1 - d) * weights[n].double() for n in names}
    moved = 0
    for n in names:
        assert torch.allclose(trainer.ema.shadow[n].double(), expected[n], atol=1e-6), n
        moved += not torch.allclose(trainer.ema.shadow[n], history[-1][n], atol=1e-6)
    assert moved > len(names) // 2  # the average is not the last weights
    assert torch.equal(dict(trainer.adapter.model.named_parameters())[names[0]], history[-1][names[0]])
    assert any(
        "ema decay 0.6 (validation, best and final use the averaged" in r.message for r in caplog.records
    )


def test_validation_best_and_final_use_the_average_checkpoints_keep_both(tmp_path):
    lines = real_lines(10)
    adapter = tiny_adapter(lines[:8])
    averages: dict[int, dict[str, torch.Tensor]] = {}
    evaluated: list[dict[str, torch.Tensor]] = []
    recognize = adapter.recognize

    def spy(images, *args, **kwargs):  # the weights the validation ran with
        trains = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
        evaluated.append(_weights(adapter.model, trains))
        return recognize(images, *args, **kwargs)

    adapter.recognize = spy

    def record(t):
        averages[t.step] = {n: s.clone() for n, s in t.ema.shadow.items()}

    result, trainer = run(
        tmp_path, "max_steps=4", "optim.lr=1e-2", "ema.decay=0.6", "eval.every_steps=2", "checkpoint.every_steps=4",
        adapter=adapter, samples=lines[:8], eval_samples=lines[8:], callbacks=[record],
    )  # fmt: skip
    names = list(trainer.ema.params)
    assert [e["step"] for e in result.evals] == [2, 4] and result.best_step in (2, 4)
    assert len(evaluated) == 2  # one recognize batch per validation (2 eval lines)
    for seen, step in zip(evaluated, (2, 4), strict=True):
        assert all(torch.equal(seen[n], averages[step][n]) for n in names), step

    def saved(name: str) -> dict[str, torch.Tensor]:
        return _weights(load_engine(str(tmp_path / name)).model, names)

    final, best = saved("final"), saved("best")
    raw = _weights(trainer.adapter.model, names)  # the training weights are back in the model
    assert all(torch.equal(final[n], averages[4][n]) for n in names)
    assert all(torch.equal(best[n], averages[result.best_step][n]) for n in names)
    assert not all(torch.equal(final[n], raw[n]) for n in names)
    model_state, state = ckpt.load_training_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert all(torch.equal(model_state[n], raw[n]) for n in names)  # resumes from the training weights
    assert state["ema"]["updates"] == 4
    assert all(torch.equal(state["ema"]["shadow"][n], averages[4][n]) for n in names)
    assert "moving average of the weights, decay 0.6" in (tmp_path / "final" / "README.md").read_text()


def test_resume_without_a_saved_average_starts_it_from_the_resumed_weights(tmp_path):
    run(tmp_path, "max_steps=2")
    with pytest.warns(UserWarning, match="holds no weight average"):
        result, trainer = run(tmp_path, "max_steps=3", "resume=true", "ema.decay=0.9")
    assert result.steps == 3 and trainer.ema.updates == 1
