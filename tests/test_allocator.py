"""training/allocator.py: with a fixed mmap threshold, freed blocks leave RSS at once (glibc Linux)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys
import psutil, torch
from deepsynth.training.allocator import set_mmap_threshold
ok = set_mmap_threshold(float(sys.argv[1])) if sys.argv[1] != "none" else False
rss = lambda: psutil.Process().memory_info().rss / 2**20
torch.empty(4 << 18).fill_(1); keep, drop = [], []
for i in range(60):  # interleaved 4 MiB blocks: freeing every other one leaves holes in a heap
    (keep if i % 2 else drop).append(torch.ones(4 << 18))
before = rss(); drop.clear()
print(json.dumps({"set": ok, "released_mb": before - rss()}))
"""


def released(arg: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_mmap_threshold_releases_freed_blocks_at_once():
    fixed, default = released("1"), released("none")
    assert fixed["set"] and not default["set"]
    assert fixed["released_mb"] > 100  # 30 freed blocks of 4 MiB went back to the OS
    assert default["released_mb"] < fixed["released_mb"] / 2  # the heap kept its holes
