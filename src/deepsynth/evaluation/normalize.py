"""Named, composable text normalisation profiles applied to references and hypotheses before scoring.

A profile is a name or several joined with ``+`` and applied left to right, e.g. ``"nfkc+casefold+collapse"``.
Primitive steps: ``none``, ``nfc``, ``nfd``, ``nfkc``, ``nfkd``, ``collapse`` (whitespace runs → one space,
stripped), ``nospace`` (drop all whitespace), ``casefold``, ``lower``, ``strip_punct`` (Unicode category P*),
``strip_marks`` (drop combining accents after NFD, e.g. é → e), ``dehyphen`` (join ``¬``/``-`` line-end
hyphenation). Presets reproduce how known benchmarks normalise (see :data:`PRESETS`).
Every report records the profile string, so numbers are comparable only with the same profile.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable
from functools import lru_cache

Normalizer = Callable[[str], str]

_WS = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _punct_table() -> dict[int, None]:
    return {i: None for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")}


def _strip_punct(text: str) -> str:
    return text.translate(_punct_table())


def _strip_marks(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


_DEHYPHEN = re.compile(r"[¬-]\s*\n\s*|¬\s*$|¬\s+")


def _dehyphen(text: str) -> str:
    """Remove line-end hyphenation marks: ``¬`` anywhere it ends a line or a word, ``-`` before a newline."""
    return _DEHYPHEN.sub("", text)


STEPS: dict[str, Normalizer] = {
    "none": lambda s: s,
    "nfc": lambda s: unicodedata.normalize("NFC", s),
    "nfd": lambda s: unicodedata.normalize("NFD", s),
    "nfkc": lambda s: unicodedata.normalize("NFKC", s),
    "nfkd": lambda s: unicodedata.normalize("NFKD", s),
    "collapse": lambda s: _WS.sub(" ", s).strip(),
    "nospace": lambda s: _WS.sub("", s),
    "casefold": str.casefold,
    "lower": str.lower,
    "strip_punct": _strip_punct,
    "strip_marks": _strip_marks,
    "dehyphen": _dehyphen,
}

PRESETS: dict[str, str] = {}


def _compose(steps: list[Normalizer]) -> Normalizer:
    def run(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return run


def profile_steps(profile: str) -> list[str]:
    """Expand a profile (presets included) into its primitive step names."""
    names: list[str] = []
    for part in (p.strip().lower() for p in (profile or "none").split("+")):
        if part in PRESETS:
            names.extend(profile_steps(PRESETS[part]))
        elif part in STEPS:
            if part != "none":
                names.append(part)
        elif part in CUSTOM:
            names.append(part)
        else:
            known = ", ".join(sorted(set(STEPS) | set(PRESETS) | set(CUSTOM)))
            raise ValueError(f"unknown normalisation step {part!r} in profile {profile!r}; known: {known}")
    return names


CUSTOM: dict[str, Normalizer] = {}


def get_normalizer(profile: str = "none") -> Normalizer:
    """The function for a profile such as ``"nfc"``, ``"omnidocbench"`` or ``"nfkc+casefold+collapse"``.

    The returned callable carries ``.profile`` (the string asked for) and ``.steps`` (expanded names).
    """
    names = profile_steps(profile)
    fn = _compose([STEPS.get(n) or CUSTOM[n] for n in names])
    fn.profile = profile or "none"  # type: ignore[attr-defined]
    fn.steps = names  # type: ignore[attr-defined]
    return fn


def available_profiles() -> list[str]:
    return sorted(set(STEPS) | set(PRESETS) | set(CUSTOM))
