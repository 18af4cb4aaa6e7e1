"""Installed-font discovery and glyph coverage (fontTools cmap), so synthetic text never renders as tofu."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable
from pathlib import Path

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_EXTS = (".ttf", ".otf", ".ttc")
# Text faces tried first, in this order (Debian fonts-dejavu-core, fonts-noto-core); every other font follows.
PREFERRED = (
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "NotoSans-Regular.ttf",
    "NotoSerif-Regular.ttf",
    "DejaVuSansMono.ttf",
    "NotoSansMono-Regular.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSerifCondensed.ttf",
    "NotoSans-Italic.ttf",
    "NotoSerif-Italic.ttf",
)
_SKIP = ("glyphicons", "Math", "Music", "Emoji", "Symbols")


class GlyphError(ValueError):
    """No installed font has every glyph of a text; names the characters."""

    def __init__(self, text: str, missing: Iterable[str]):
        self.missing = sorted(set(missing))
        names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in self.missing[:8])
        super().__init__(f"no installed font has a glyph for {names} (text {text[:40]!r})")


def _rank(path: Path) -> tuple[int, str]:
    try:
        return PREFERRED.index(path.name), path.name
    except ValueError:
        return len(PREFERRED), path.name


@functools.cache
def installed_fonts() -> tuple[Path, ...]:
    """Font files on this machine (fc-list, else a scan of the usual folders), preferred text faces first."""
    files: set[Path] = set()
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(
                ["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=20, check=False
            ).stdout
            files = {
                Path(line.strip()) for line in out.splitlines() if line.strip().lower().endswith(FONT_EXTS)
            }
        except (OSError, subprocess.SubprocessError):
            files = set()
    if not files:
        for d in FONT_DIRS:
            for dirpath, _, names in os.walk(Path(d).expanduser()):
                files.update(Path(dirpath) / n for n in names if n.lower().endswith(FONT_EXTS))
    files = {f for f in files if f.is_file() and not any(s in f.name for s in _SKIP)}
    return tuple(sorted(files, key=_rank))


@functools.lru_cache(maxsize=512)
def font_cmap(path: str | Path) -> frozenset[int]:
    """Code points the font maps to a glyph (empty if fontTools cannot read it)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(str(path), lazy=True, fontNumber=0) as f:
            return frozenset((f.getBestCmap() or {}).keys())
    except Exception:
        return frozenset()


def needed_chars(text: str) -> set[str]:
    """Characters that need a glyph: everything except whitespace and format/control characters."""
    return {c for c in text if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")}


def missing_glyphs(font: str | Path, text: str) -> set[str]:
    """Characters of ``text`` the font has no glyph for."""
    cmap = font_cmap(str(font))
    return {c for c in needed_chars(text) if ord(c) not in cmap}


def fonts_covering(text: str, fonts: Iterable[Path] | None = None, limit: int | None = None) -> list[Path]:
    """Fonts (in preference order) that have every glyph of ``text``."""
    out = []
    for f in installed_fonts() if fonts is None else fonts:
        if not missing_glyphs(f, text):
            out.append(Path(f))
            if limit is not None and len(out) >= limit:
                break
    return out


def choose_font(text: str, preferred: str | Path | None = None) -> Path:
    """``preferred`` if it covers ``text``, else the first installed font that does; raises GlyphError."""
    if preferred is not None and not missing_glyphs(preferred, text):
        return Path(preferred)
    found = fonts_covering(text, limit=1)
    if not found:
        uncovered = needed_chars(text)
        for f in installed_fonts():
            uncovered &= missing_glyphs(f, text)
        raise GlyphError(text, uncovered or needed_chars(text))
    return found[0]
