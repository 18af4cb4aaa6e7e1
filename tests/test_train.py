"""The trainer on a tiny PP-OCRv6 model and real Fraktur line crops: resume, checkpoints, bad samples, stopping."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from deepsynth.config import load_config
from deepsynth.data import Sample
from deepsynth.training import checkpoint as ckpt
from deepsynth.training.config import TrainConfig
from deepsynth.training.schedule import WarmupDecay
from deepsynth.training.trainer import Trainer
from tests._train_data import real_lines, tiny_adapter

BASE = [
    "batch_size=2", "eval.at_start=false", "eval.every_steps=0", "checkpoint.every_steps=0",
    "trackers=[jsonl]", "progress=false", "num_threads=1", "optim.warmup_steps=2", "model.extend_charset=false",
]  # fmt: skip


def make_cfg(out, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*BASE, f"output_dir={out}", *overrides])


def run(out, *overrides: str, samples=None, eval_samples=None, callbacks=None, adapter=None):
    samples = samples if samples is not None else real_lines(8)
    trainer = Trainer(
        make_cfg(out, *overrides),
        adapter=adapter or tiny_adapter(real_lines(8)),
        train_samples=samples,
        eval_samples=eval_samples or [],
        callbacks=callbacks,
    )
    return trainer.run(), trainer


@pytest.mark.parametrize(
    "lora,ema",
    [(False, 0.0), (True, 0.0), (False, 0.9), (True, 0.9)],
    ids=["full", "lora", "full-ema", "lora-ema"],
)
def test_resume_gives_identical_losses(tmp_path, lora, ema):
    # 8 samples, batch 2, grad_accum 2 -> 2 optimizer steps per epoch: 6 steps cross two epoch boundaries
    opts = [
        "max_steps=6",
        "grad_accum=2",
        f"lora.enabled={str(lora).lower()}",
        "optim.lr=1e-3",
        f"ema.decay={ema}",
    ]
    full, t_full = run(tmp_path / "full", *opts)
    part, _ = run(tmp_path / "cut", *opts, callbacks=[lambda t: t.request_stop() if t.step == 3 else None])
    assert part.stopped == "interrupted" and sorted(part.losses) == [1, 2, 3]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-0000003"]
    rest, t_rest = run(tmp_path / "cut", *opts, "resume=true")
    assert sorted(full.losses) == list(range(1, 7))
    assert rest.losses == full.losses  # exactly equal floats, steps 1..6
    for (name, a), b in zip(
        t_full.adapter.model.state_dict().items(), t_rest.adapter.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    if ema:  # the moving average is restored too: the same averaged weights (what best/final hold)
        assert t_full.ema.updates == t_rest.ema.updates == 6
        assert list(t_full.ema.shadow) == list(t_rest.ema.shadow)
        assert not lora or all("lora_" in n for n in t_rest.ema.shadow)
        for name, a in t_full.ema.shadow.items():
            assert torch.equal(a, t_rest.ema.shadow[name]), name
    history = yaml.safe_load((tmp_path / "cut" / "run.yaml").read_text())
    assert history["resumed_from"].endswith("step-0000003") and len(history["history"]) == 1


def test_refuses_to_mix_runs_without_resume(tmp_path):
    run(tmp_path, "max_steps=1")
    with pytest.raises(FileExistsError, match="resume=true"):
        run(tmp_path, "max_steps=1")


def test_bad_samples_are_skipped_and_reported(tmp_path):
    good = real_lines(8)

    def broken_loader():
        raise OSError("truncated PNG")

    bad = [
        Sample(id="unreadable-1", text="abc", image_loader=broken_loader),
        Sample.from_image(
            "no-trainable-char", good[0].image.copy(), text="\u2603\u2603"
        ),  # snowmen: not in charset
    ]
    result, _ = run(tmp_path, "epochs=2", samples=[*good[:4], bad[0], *good[4:], bad[1]])
    assert result.steps == 10 and result.skipped_samples == 2  # each bad sample reported once, not per epoch
    report = json.loads((tmp_path / "data_report.json").read_text())
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert "truncated PNG" in reasons["unreadable-1"]
    assert "no trainable character" in reasons["no-trainable-char"]
    assert all(v == v and v < 100 for v in result.losses.values())


def test_non_finite_batch_is_skipped_with_warning(tmp_path, caplog):
    adapter = tiny_adapter(real_lines(8))
    real_loss = adapter.loss
    poisoned = real_lines(8)[3].id

    def loss(batch):  # a numerically broken batch (cannot be produced on demand by a real model)
        value = real_loss(batch)
        return value * float("nan") if poisoned in batch["ids"] else value

    adapter.loss = loss
    result, trainer = run(tmp_path, "max_steps=4", "data.shuffle=false", adapter=adapter)
    assert result.skipped_batches == 1 and result.steps == 4
    assert all(torch.isfinite(p).all() for p in trainer.adapter.model.parameters())
    assert any("non-finite loss" in r.message for r in caplog.records)


def test_eval_early_stopping_and_best_model(tmp_path):
    lines = real_lines(10)
    result, trainer = run(
        tmp_path, "max_steps=20", "optim.lr=0", "optim.weight_decay=0", "eval.every_steps=2",
        "eval.patience=2", "eval.at_start=true", "checkpoint.keep_last=1",
        samples=lines[:8], eval_samples=lines[8:],
    )  # fmt: skip
    # lr 0: CER never improves after the start evaluation -> stop after 2 evaluations without improvement
    assert result.stopped == "early stopping" and result.steps == 4
    assert [e["step"] for e in result.evals] == [0, 2, 4] and result.best_step == 0
    from deepsynth.models.registry import load_engine

    best = load_engine(str(tmp_path / "best"))  # a servable model directory, found by its model card
    images = [s.image for s in lines[8:]]
    assert [p.text for p in best.recognize(images)] == [p.text for p in trainer.adapter.recognize(images)]
    ckpt.verify(tmp_path / "best")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/cer" in r] == [0, 2, 4]
    assert "ref:" in (tmp_path / "texts.jsonl").read_text(encoding="utf-8")


def test_run_yaml_records_what_reproduces_the_run(tmp_path):
    lines = real_lines(8)
    run(tmp_path, "max_steps=1", samples=lines)
    info = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert info["config"]["batch_size"] == 2 and info["packages"]["torch"] == torch.__version__
    assert len(info["git"]["commit"] or "") in (0, 40)
    assert info["data"]["train"]["n"] == 8 and len(info["data"]["train"]["sha256"]) == 64
    run(
        tmp_path / "other",
        "max_steps=1",
        samples=lines[:7] + [Sample.from_image("x", lines[7].image, lines[7].text + "!")],
    )
    other = yaml.safe_load((tmp_path / "other" / "run.yaml").read_text())
    assert other["data"]["train"]["sha256"] != info["data"]["train"]["sha256"]


def test_checkpoints_are_atomic_verified_and_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    for step in (1, 2, 3):
        ckpt.save_training_checkpoint(ckpt.step_dir(root, step), state, {"step": step})
    ckpt.prune_checkpoints(root, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-0000002", "step-0000003"]
    model_state, trainer_state = ckpt.load_training_checkpoint(ckpt.latest_checkpoint(root))
    assert torch.equal(model_state["w"], state["w"]) and trainer_state["step"] == 3

    # a crash while writing leaves neither a partial directory nor a temp dir behind
    def crash(tmp):
        (tmp / "half.bin").write_bytes(b"xx")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ckpt.write_atomic(ckpt.step_dir(root, 4), crash)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002", "step-0000003"]

    # a flipped byte is caught by the manifest
    f = ckpt.step_dir(root, 3) / ckpt.MODEL_STATE
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load_training_checkpoint(ckpt.step_dir(root, 3))


def _leave_temp_dirs(root, step):
    """Temp dirs as a kill -9 during a checkpoint write leaves them (old and current naming), plus one that a
    live process (pid 1) is still writing."""
    dead = [root / f".tmp-step-{step:07d}-0badc0de", root / f".tmp-step-{step:07d}.pid999999999-0badc0de"]
    live = root / f".tmp-step-{step:07d}.pid1-0badc0de"
    for d in (*dead, live):
        d.mkdir(parents=True)
        (d / ckpt.MODEL_STATE).write_bytes(b"x" * 1000)
    return dead, live


def test_interrupted_checkpoint_writes_are_cleaned_after_a_write_and_at_start(tmp_path):
    root = tmp_path / "checkpoints"
    dead, live = _leave_temp_dirs(root, 7)
    ckpt.save_training_checkpoint(ckpt.step_dir(root, 1), {"w": torch.zeros(2)}, {"step": 1})
    assert sorted(p.name for p in root.iterdir()) == [live.name, "step-0000001"]

    run_dir = tmp_path / "run"
    dead, live = _leave_temp_dirs(run_dir / "checkpoints", 3)
    run(run_dir, "max_steps=1", "checkpoint.save_final=false", "checkpoint.save_best=false")
    assert not any(d.exists() for d in dead) and live.is_dir()


def test_warmup_then_cosine_schedule():
    f = WarmupDecay(warmup=4, total=14, kind="cosine", min_ratio=0.1)
    assert [round(f(s), 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    lin = WarmupDecay(warmup=0, total=10, kind="linear", min_ratio=0.0)
    assert lin(5) == pytest.approx(0.5)


def test_lora_trains_only_adapters_and_checkpoints_only_them(tmp_path):
    result, trainer = run(tmp_path, "max_steps=2", "lora.enabled=true", "lora.r=4", "optim.lr=1e-2")
    trainable = {n for n, p in trainer.adapter.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    saved, _ = ckpt.load_training_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert set(saved) == trainable


def test_optimizer_choice_and_config_errors(tmp_path):
    from typer.testing import CliRunner

    from deepsynth.cli.main import app
    from deepsynth.training.config import OptimSettings
    from deepsynth.training.schedule import optimizer_name

    if not torch.cuda.is_available():
        assert optimizer_name(OptimSettings()) == "adamw"  # paged 8-bit AdamW needs CUDA + bitsandbytes
    res = CliRunner().invoke(app, ["train", "configs/ppocr_demo.yaml", "optim.lrr=1e-4"])
    assert res.exit_code == 2 and "optim.lrr" in res.output
    res = CliRunner().invoke(app, ["train", "configs/ppocr_demo.yaml", "max_steps=3", "--print-config"])
    assert res.exit_code == 0 and "max_steps: 3" in res.output


def test_batch_plan_covers_every_sample_and_shards_disjointly():
    from deepsynth.training.data import BatchPlan

    lengths = [float((i * 7919) % 23) for i in range(37)]
    for grouped in (None, lengths):
        plan = BatchPlan(37, 4, seed=1, lengths=grouped)
        batches = plan.epoch_batches(0)
        assert sorted(i for b in batches for i in b) == list(range(37))  # one process keeps the remainder
        assert batches != plan.epoch_batches(1)  # reshuffled every epoch
        ranks = [
            BatchPlan(37, 2, world_size=2, rank=r, seed=1, lengths=grouped).epoch_batches(0) for r in (0, 1)
        ]
        assert len(ranks[0]) == len(ranks[1]) == 37 // 4  # equal step counts, or DDP would hang
        flat = [i for r in ranks for b in r for i in b]
        assert len(flat) == len(set(flat)) == 36
    spread = [
        max(lengths[i] for i in b) - min(lengths[i] for i in b)
        for b in BatchPlan(37, 4, lengths=lengths).epoch_batches(0)
    ]
    random_spread = [
        max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in BatchPlan(37, 4).epoch_batches(0)
    ]
    assert sum(spread) < sum(random_spread) / 2  # grouped batches hold similar lengths


def test_bf16_on_cpu_autocasts_where_the_cpu_has_native_bf16(tmp_path, monkeypatch):
    from deepsynth.training import runtime

    monkeypatch.setattr(runtime, "cpu_bf16", lambda: False)
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="no native bf16"):
            assert runtime.choose_precision("bf16") == "no"
    monkeypatch.undo()
    if torch.cuda.is_available() or not runtime.cpu_bf16():
        pytest.skip("needs a CPU with native bf16 (AVX512-BF16 / AMX) and no GPU")
    assert runtime.choose_precision("bf16") == "bf16"
    assert runtime.choose_precision("auto") == "no"  # fp32 stays the default; recipes opt in
    fp32, _ = run(tmp_path / "fp32", "max_steps=3", "precision=fp32")
    bf16, _ = run(tmp_path / "bf16", "max_steps=3", "precision=bf16")
    a, b = (torch.tensor([r.losses[s] for s in (1, 2, 3)]) for r in (fp32, bf16))
    assert not torch.equal(a, b)  # autocast really ran the forward pass in bf16
    assert torch.allclose(a, b, rtol=0.05)  # and trained the same model to within bf16 rounding


def test_gradient_checkpointing_option_trains_the_same_steps(tmp_path):
    """model.options.gradient_checkpointing reaches the adapter through the trainer: same losses, step by step."""
    opts = ["max_steps=3", "optim.lr=1e-3"]
    plain, _ = run(tmp_path / "plain", *opts)
    ckpt_run, trainer = run(tmp_path / "ckpt", *opts, "model.options.gradient_checkpointing=blocks")
    assert trainer.adapter.gradient_checkpointing == "blocks"
    stem = trainer.adapter.core.model.backbone.encoder.convolution
    assert "forward" in vars(stem)  # the stem runs under torch.utils.checkpoint
    assert sorted(ckpt_run.losses) == [1, 2, 3]
    for step, loss in plain.losses.items():
        assert abs(ckpt_run.losses[step] - loss) <= 1e-6, step


def test_pruned_charset_trains_resumes_and_saves_the_smaller_head(tmp_path):
    from deepsynth.models.ppocr.adapter import PPOCRAdapter

    chars = "".join(sorted({c for s in real_lines(8) for c in s.text}))

    def adapter():
        return PPOCRAdapter.tiny_random(chars + "中文한", seed=0)

    opts = ["max_steps=4", "optim.lr=1e-3", "model.prune_charset=true"]
    full, t_full = run(tmp_path / "full", *opts, adapter=adapter())
    assert t_full.adapter.charset.chars == list(chars)  # 中文한 dropped (the lines have a space already)
    part, _ = run(tmp_path / "cut", *opts, adapter=adapter(),
                  callbacks=[lambda t: t.request_stop() if t.step == 2 else None])  # fmt: skip
    rest, _ = run(tmp_path / "cut", *opts, "resume=true", adapter=adapter())
    assert rest.losses == full.losses
    saved = PPOCRAdapter.load(tmp_path / "full" / "final")
    assert "中" not in saved.charset and saved.core.config.head_out_channels == saved.charset.num_classes
