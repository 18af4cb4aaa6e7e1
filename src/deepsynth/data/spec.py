"""Source specs (``name=path[:image_root]`` or a bare path) and format auto-detection."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("jsonl", "parquet", "webdataset", "hf", "folder")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif")
_BRACES = re.compile(r"\{\d+\.\.\d+\}")


class SourceError(ValueError):
    """A source spec that cannot be opened (missing path, unknown format). Names the spec."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: Path
    image_root: Path | None
    format: str
    absolute_images: bool = False  # manifests may name images by absolute path (sources the user points at)

    @property
    def label(self) -> str:
        return f"{self.name}={self.path}"


def _split_path_root(rest: str) -> tuple[str, str | None]:
    if Path(rest).exists() or _BRACES.search(rest) or ":" not in rest:
        return rest, None
    path, root = rest.rsplit(":", 1)
    return path, root or None


def detect_format(path: Path) -> str:
    """Guess the format of a file or directory; raises SourceError when nothing matches."""
    p = str(path)
    if _BRACES.search(p) or p.endswith(".tar"):
        return "webdataset"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if suffix == ".parquet":
            return "parquet"
        raise SourceError(f"{path}: unknown source file type {suffix!r} (expected .jsonl, .parquet or .tar)")
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or directory")
    if (path / "manifest.jsonl").is_file():
        return "jsonl"
    if (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    ):
        return "hf"
    if any(path.glob("*.parquet")):
        return "parquet"
    if any(path.glob("*.tar")):
        return "webdataset"
    return "folder"


def parse_spec(spec: str, *, format: str | None = None) -> SourceSpec:
    """Parse ``name=path[:image_root]`` (or a bare path; the name is then the folder/file stem)."""
    name = None
    rest = spec
    if "=" in spec:
        head, tail = spec.split("=", 1)
        if head and "/" not in head and not Path(spec).exists():
            name, rest = head, tail
    path_str, root_str = _split_path_root(rest)
    path = Path(path_str).expanduser()
    if not _BRACES.search(path_str) and not path.exists():
        raise SourceError(f"source {spec!r}: {path} does not exist")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise SourceError(f"source {spec!r}: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if name is None:
        base = path.parent if path.is_file() and path.name == "manifest.jsonl" else path
        name = base.stem if base.is_file() else base.name
    root = Path(root_str).expanduser() if root_str else None
    if root is not None and not root.is_dir():
        raise SourceError(f"source {spec!r}: image root {root} is not a directory")
    return SourceSpec(name=name, path=path, image_root=root, format=fmt)
