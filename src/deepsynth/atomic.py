"""Directories that appear complete or not at all: write into a temporary sibling, rename at the end.

Temporary siblings are named ``.tmp-<name>.pid<pid>-<random>`` (``.old-...`` while a
directory is being replaced). A writer killed mid-way leaves one behind; :func:`clean_stale` removes those
whose process is gone (or is this process but no longer writing), so they never accumulate. Used by training
checkpoints and by ``data prepare``.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from pathlib import Path

_TEMP = re.compile(r"^\.(?:tmp|old)-(?P<name>.+)\.pid(?P<pid>\d+)-[0-9a-f]{8}$")
_LEGACY = re.compile(r"^\.(?:tmp|old)-(?P<name>.+)-[0-9a-f]{8}$")  # before the pid was recorded
_active: set[str] = set()
_lock = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sibling(final: Path, kind: str) -> Path:
    return final.parent / f".{kind}-{final.name}.pid{os.getpid()}-{uuid.uuid4().hex[:8]}"


def staging_dir(final: str | Path) -> Path:
    """Create and return an empty temporary sibling of ``final`` (registered as in use by this process)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    with _lock:
        _active.add(str(tmp))
    return tmp


def release(tmp: Path) -> None:
    """Forget a staging dir (after it was renamed into place or removed)."""
    with _lock:
        _active.discard(str(tmp))


def discard(tmp: Path) -> None:
    """Remove a staging dir that will not be used."""
    shutil.rmtree(tmp, ignore_errors=True)
    release(tmp)


def _umask() -> int:
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def make_readable(directory: Path) -> None:
    """Give every file under ``directory`` the read bits the umask allows: libraries that write through a
    private temporary file (safetensors via transformers) leave 0600, so a container running as another user
    could not read the weights while every other file is 0644."""
    bits = 0o444 & ~_umask()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o7777
            if mode | bits != mode:
                path.chmod(mode | bits)


def replace_dir(tmp: Path, final: str | Path) -> Path:
    """Rename ``tmp`` to ``final``, replacing an existing ``final`` (its old copy is removed afterwards).
    Its files become readable as the umask allows (:func:`make_readable`)."""
    final = Path(final)
    make_readable(tmp)
    old = None
    if final.exists():
        old = _sibling(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    release(tmp)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_stale(parent: str | Path, name: str | None = None) -> list[Path]:
    """Remove temporary siblings in ``parent`` (only those for ``name`` if given) left by dead writers."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    me = os.getpid()
    for p in parent.iterdir():
        m = _TEMP.match(p.name) or _LEGACY.match(p.name)
        if m is None or not p.is_dir() or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"]) if "pid" in m.groupdict() else None
        with _lock:
            in_use = str(p) in _active
        if in_use or (pid is not None and pid != me and _alive(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def write_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` so that ``path`` holds the old or the new content, never a torn file (fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
