"""torch threads stay within OMP_THREAD_LIMIT (oneDNN's conv backward hangs otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
import torch
torch.set_num_threads(2)
from deepsynth.models.ppocr.adapter import PPOCRAdapter
a = PPOCRAdapter.tiny_random("abc")
x = torch.zeros(2, 3, 48, 160)
a.train_mode()
a.logits(x).sum().backward()  # the op that hung: conv backward under the limit
print(torch.get_num_threads())
"""


def _threads_with(env_extra: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"} | env_extra
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_limit_caps_torch_threads():
    assert _threads_with({"OMP_THREAD_LIMIT": "1"}) == 1


def test_no_limit_leaves_threads_alone():
    assert _threads_with({}) == 2
