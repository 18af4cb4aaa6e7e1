"""Named, composable text normalisation profiles applied to references and hypotheses before scoring.

A profile is a name or several joined with ``+`` and applied left to right, e.g. ``"nfkc+casefold+collapse"``.
Primitive steps: ``none``, ``nfc``, ``nfd``, ``nfkc``, ``nfkd``, ``collapse`` (whitespace runs → one space,
stripped), ``nospace`` (drop all whitespace), ``casefold``, ``lower``, ``strip_punct`` (Unicode category P*),
``strip_marks`` (drop combining accents after NFD, e.g. é → e), ``hyphen`` (``¬`` → ``-``: transcriptions such
as FoNDUE write printed line-end hyphens as ``¬``), ``dehyphen`` (join words hyphenated across page lines).
Presets reproduce how known benchmarks normalise (see :data:`PRESETS`): ``jiwer``, ``jiwer_standard``,
``omnidocbench``, ``olmocr``, ``paddleocr``, ``paddleocr_filter``, plus ``ocr_standard`` (nfc+hyphen+collapse).
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


_DEHYPHEN = re.compile(r"[¬-][ \t]*\n[ \t]*")


def _dehyphen(text: str) -> str:
    """Join words hyphenated across lines in page text: ``exam-\\nple`` / ``exam¬\\nple`` → ``example``."""
    return _DEHYPHEN.sub("", text)


# --- benchmark presets, reproduced from each project's evaluation code ---------------------------------------

_JIWER_MULTI_WS = re.compile(r"\s\s+")


def _jiwer_default(text: str) -> str:
    r"""jiwer 4 ``wer_default`` as text: RemoveMultipleSpaces (``\s\s+`` → space) then Strip."""
    return _JIWER_MULTI_WS.sub(" ", text).strip()


_CONTRACTIONS = [
    (r"won't", "will not"), (r"can\'t", "can not"), (r"let\'s", "let us"), (r"n\'t", " not"),
    (r"\'re", " are"), (r"\'s", " is"), (r"\'d", " would"), (r"\'ll", " will"), (r"\'t", " not"),
    (r"\'ve", " have"), (r"\'m", " am"),
]  # fmt: skip
_KALDI_NON_WORDS = re.compile(r"[<\[][^>\]]*[>\]]")
_ASCII_WS = " \t\n\r\x0b\x0c"  # string.whitespace


def _jiwer_standardize(text: str) -> str:
    """jiwer 4 ``wer_standardize``: lower, expand English contractions, drop <...>/[...] non-words,
    every ASCII whitespace → space, then the default collapse + strip."""
    text = text.lower()
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text)
    text = _KALDI_NON_WORDS.sub("", text)
    for ch in _ASCII_WS:
        text = text.replace(ch, " ")
    return _jiwer_default(text)


_OMNI_KEEP = re.compile(r"[^\w\u4e00-\u9fff]")


_INLINE_MATH = re.compile(r"\$(.*?)\$|\\\((.*?)\\\)")
_LATEX_ESCAPED = re.compile(r"\\[\\_&%^]")


def _latex_inline(text: str) -> str:
    r"""OmniDocBench ``textblock2unicode``: each inline formula (``$...$`` or ``\(...\)``) that holds a
    ``\``, ``^`` or ``_`` is replaced by pylatexenc's Unicode text of it (``$\alpha_1$`` → ``α_1``). As there,
    escaped ``\\ \_ \& \% \^`` are dropped first, and a formula pylatexenc cannot read stays as it was."""
    try:
        from pylatexenc.latex2text import LatexNodes2Text
    except ImportError as exc:  # pragma: no cover - pylatexenc is in the eval extra
        raise ImportError("the latex_inline step needs pylatexenc: pip install 'deepsynth[eval]'") from exc
    out, last = [], 0
    for m in _INLINE_MATH.finditer(text):
        body = _LATEX_ESCAPED.sub("", m.group(1) if m.group(1) is not None else m.group(2))
        if not any(c in body for c in "\\^_"):
            continue
        try:
            converted = LatexNodes2Text().latex_to_text(body + " " if body.endswith("\\") else body)
        except Exception:  # noqa: BLE001 - unreadable LaTeX is kept verbatim, as OmniDocBench does
            continue
        out += [text[last : m.start()], converted.strip()]
        last = m.end()
    return "".join(out) + text[last:]


def _omnidocbench_text(text: str) -> str:
    r"""OmniDocBench ``clean_string`` for text blocks: drop literal ``\t``/``\n``/``/t``/``/n`` escapes and
    tabs/newlines, then keep only word characters (letters, digits, ``_``) and CJK ideographs."""
    for token in ("\\t", "\\n", "\t", "\n", "/t", "/n"):
        text = text.replace(token, "")
    return _OMNI_KEEP.sub("", text)


_OLMOCR_REPLACEMENTS = {
    "‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "＿": "_", "–": "-", "—": "-", "‑": "-",
    "‒": "-", "−": "-", "\u00b5": "\u03bc",
}  # fmt: skip


def _olmocr_bench(text: str) -> str:
    """olmOCR-bench ``normalize_text``: <br> → space, strip markdown/HTML bold+italic markers, collapse
    whitespace (no strip), NFC, fancy quotes/dashes → ASCII, micro sign → Greek mu."""
    text = re.sub(r"<br/?>", " ", text)
    text = re.sub(r"\*\*(.*?)\*\*", r"\1", text)
    text = re.sub(r"__(.*?)__", r"\1", text)
    text = re.sub(r"</?b>", "", text)
    text = re.sub(r"</?i>", "", text)
    text = re.sub(r"(\*\*|__)(.*?)\1", r"\2", text)
    text = re.sub(r"(\*|_)(.*?)\1", r"\2", text)
    text = re.sub(r"\s+", " ", text)
    text = unicodedata.normalize("NFC", text)
    for fancy, plain in _OLMOCR_REPLACEMENTS.items():
        text = text.replace(fancy, plain)
    return text


def _paddle_filter(text: str) -> str:
    """PaddleOCR ``RecMetric(is_filter=True)``: keep ASCII letters and digits only, lower-cased."""
    return "".join(c for c in text if c.isascii() and c.isalnum()).lower()


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
    "hyphen": lambda s: s.replace("¬", "-"),
    "jiwer_default": _jiwer_default,
    "jiwer_standardize": _jiwer_standardize,
    "omnidocbench_text": _omnidocbench_text,
    "latex_inline": _latex_inline,
    "olmocr_text": _olmocr_bench,
    "drop_spaces": lambda s: s.replace(" ", ""),
    "paddle_filter": _paddle_filter,
}

# preset name -> profile (these names are what reports state)
PRESETS: dict[str, str] = {
    "jiwer": "jiwer_default",  # jiwer 4's default transform (what wer/cer already tokenise by)
    "jiwer_standard": "jiwer_standardize",
    # text blocks (inline LaTeX → Unicode, then clean_string); pair with ned (OmniDocBench "Edit_dist")
    "omnidocbench": "latex_inline+omnidocbench_text",
    "olmocr": "olmocr_text",
    "paddleocr": "drop_spaces",  # RecMetric default ignore_space=True; pair with ned / exact_match
    "paddleocr_filter": "drop_spaces+paddle_filter",  # RecMetric(is_filter=True)
    # fair engine comparison on transcriptions: NFC (not NFKC: it folds long s ſ into s), ¬ → -, collapse
    "ocr_standard": "nfc+hyphen+collapse",
}


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
        else:
            known = ", ".join(available_profiles())
            raise ValueError(f"unknown normalisation step {part!r} in profile {profile!r}; known: {known}")
    return names


def register_step(name: str, fn: Normalizer) -> None:
    """Add a named step usable in profiles (e.g. a project-specific character mapping)."""
    if "+" in name or not name:
        raise ValueError(f"step name must be non-empty and contain no '+': {name!r}")
    STEPS[name.lower()] = fn


def get_normalizer(profile: str = "none") -> Normalizer:
    """The function for a profile such as ``"nfc"``, ``"omnidocbench"`` or ``"nfkc+casefold+collapse"``.

    The returned callable carries ``.profile`` (the string asked for) and ``.steps`` (expanded names).
    """
    names = profile_steps(profile)
    fn = _compose([STEPS[n] for n in names])
    fn.profile = profile or "none"  # type: ignore[attr-defined]
    fn.steps = names  # type: ignore[attr-defined]
    return fn


def available_profiles() -> list[str]:
    return sorted(set(STEPS) | set(PRESETS))
