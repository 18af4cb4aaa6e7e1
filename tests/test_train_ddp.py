"""Data-parallel training: `accelerate launch` with 2 CPU processes (gloo) = 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepsynth.training import checkpoint as ckpt
from tests._train_data import real_lines, tiny_adapter

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dataset(tmp: Path) -> Path:
    """8 real line crops as a JSONL manifest source (the format of ../shared/data).

    All resized to one size: PP-OCR pads a batch to its widest line and CTC counts the padding frames, so a
    sample's loss depends on its batch-mates' widths; equal sizes make 2x2 and 1x4 batches comparable.
    """
    root = tmp / "lines"
    (root / "images").mkdir(parents=True)
    rows = []
    for s in real_lines(8):
        name = f"images/{s.id}.png"
        s.image.resize((480, 48)).save(root / name)
        rows.append(
            {"id": s.id, "image": name, "text": s.text, "language": "de", "subset": s.subset, "level": "line"}
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


def _train(cmd_prefix: list[str], out: Path, data: Path, model: Path, batch: int) -> dict:
    args = [
        "-m", "deepsynth.cli.main", "train", str(ROOT / "configs" / "ppocr_finetune.yaml"),
        f"output_dir={out}", f"data.train=[{data}]", "data.train_split=null", "data.eval=null",
        "data.eval_split=null", f"model.path={model}", "model.extend_charset=false", f"batch_size={batch}",
        "max_steps=4", "epochs=null", "max_minutes=null", "eval.every_steps=0", "eval.at_start=false",
        "checkpoint.every_steps=0", "trackers=[jsonl]", "progress=false", "num_threads=1", "optim.warmup_steps=0",
        "augment.p=0",  # recipe augments: 1 vs 2 processes drew different distortions (step-3 loss 13.10 vs 12.73)
        "ema.decay=0.5",  # final/ holds the moving average, which every process keeps of the unwrapped model
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [*cmd_prefix, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = _dataset(tmp_path)
    model = tmp_path / "tiny"
    tiny_adapter(real_lines(8)).save(model)
    one = _train([sys.executable], tmp_path / "one", data, model, batch=4)
    # accelerate's --cpu launcher starts ONE process unless mpirun is set up; --multi_gpu goes through torchrun,
    # and with no GPU visible the trainer's Accelerator(cpu=True) joins the processes in a gloo group
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]  # fmt: skip
    two = _train(launch, tmp_path / "two", data, model, batch=2)
    assert sorted(one["losses"]) == sorted(two["losses"]) == ["1", "2", "3", "4"]
    for step, loss in one["losses"].items():
        assert two["losses"][step] == pytest.approx(loss, rel=1e-4), step
    assert one["losses"]["4"] != one["losses"]["1"]  # training moved the model
    run = (tmp_path / "two" / "run.yaml").read_text()
    assert "world_size: 2" in run and "world_size: 1" in (tmp_path / "one" / "run.yaml").read_text()
    from safetensors.torch import load_file

    finals = [load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("one", "two")]
    trained, _ = ckpt.load_training_checkpoint(tmp_path / "two" / "checkpoints" / "step-0000004")
    assert finals[0].keys() == finals[1].keys()
    for name, weight in finals[0].items():
        assert torch.allclose(finals[1][name], weight, rtol=1e-3, atol=1e-5), name
    assert any(not torch.equal(trained[name], finals[1][name]) for name in trained if name in finals[1])
    shutil.rmtree(tmp_path / "lines")
