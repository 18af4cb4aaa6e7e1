"""Atomic, verified checkpoints.

Every directory the trainer writes (``checkpoints/step-000100``, ``best``, ``final``) goes through
:func:`write_atomic`: files are written into a temporary sibling directory, fsynced, hashed into
``manifest.json`` (sha256 per file), re-read and checked against the manifest, and only then renamed into
place. A crash leaves either the old directory or the new one, never a half-written one.

A training checkpoint holds ``model_state.safetensors`` (trainable tensors when LoRA is on, else the full
state dict), ``trainer_state.pt`` (optimizer, scheduler, RNG states, step, data position, early-stopping
state) and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepsynth import atomic

MANIFEST = "manifest.json"
MODEL_STATE = "model_state.safetensors"
TRAINER_STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not match its manifest; names the file."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> dict[str, str]:
    """Fsync every file under ``root`` and record its sha256 in ``root/manifest.json``."""
    manifest = {}
    for p in _files(root):
        _fsync(p)
        manifest[p.relative_to(root).as_posix()] = sha256_file(p)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(root / MANIFEST)
    return manifest


def verify(root: str | Path) -> dict[str, str]:
    """Re-hash every file of a written directory against its manifest; raise CheckpointError on mismatch."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{root}: no {MANIFEST} (incomplete or not a DeepSynth checkpoint)")
    manifest = json.loads(mpath.read_text())
    for rel, digest in manifest.items():
        p = root / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: listed in {MANIFEST} but missing")
        if sha256_file(p) != digest:
            raise CheckpointError(f"{p}: sha256 does not match {MANIFEST} (corrupt checkpoint)")
    extra = {p.relative_to(root).as_posix() for p in _files(root)} - set(manifest)
    if extra:
        raise CheckpointError(f"{root}: files not in {MANIFEST}: {sorted(extra)[:5]}")
    return manifest


def write_atomic(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, fsync + hash + verify, then rename ``tmp_dir`` to ``final`` (replacing it).

    Temporary directories left in ``final``'s folder by interrupted writes are removed after each success.
    """
    final = Path(final)
    tmp = atomic.staging_dir(final)
    try:
        write(tmp)
        write_manifest(tmp)
        verify(tmp)
        atomic.replace_dir(tmp, final)
    except BaseException:
        atomic.discard(tmp)
        raise
    atomic.clean_stale(final.parent)
    return final


def clean_stale_temp(root: str | Path) -> list[Path]:
    """Remove temporary directories that interrupted checkpoint writes left in ``root``; return them."""
    return atomic.clean_stale(root)


# ---- RNG state --------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_s = state["numpy"]
    np.random.set_state((np_s[0], np_s[1].numpy().astype(np.uint32), *np_s[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- training checkpoints ---------------------------------------------------------------------------


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): clone the later aliases."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone().contiguous() if ptr in seen or not v.is_contiguous() else v
        seen.add(ptr)
    return out


def save_training_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically; ``extra(tmp_dir)`` may add files (e.g. a servable model)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(_unshare(model_state), str(tmp / MODEL_STATE))
        torch.save(trainer_state, tmp / TRAINER_STATE)
        if extra is not None:
            extra(tmp)

    return write_atomic(path, write)


def load_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify a checkpoint against its manifest, then return (model_state, trainer_state)."""
    from safetensors.torch import load_file

    path = Path(path)
    verify(path)
    for name in (MODEL_STATE, TRAINER_STATE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}; not a training checkpoint")
    return load_file(str(path / MODEL_STATE)), torch.load(path / TRAINER_STATE, weights_only=True)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` (those with a manifest), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / MANIFEST).is_file()]


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; return deleted."""
    ckpts = list_checkpoints(root)
    doomed = ckpts[: max(0, len(ckpts) - max(keep_last, 1))]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
