"""Synthetic OCR samples: text lines (or pages) rendered with installed Unicode fonts, seeded and lazy."""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from deepsynth.data.augment import Augment
from deepsynth.data.fonts import PREFERRED, GlyphError, choose_font, fonts_covering, installed_fonts
from deepsynth.data.render import render_line, render_page
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample

# Small built-in corpus (written for DeepSynth, free to use) so `data synth --lang ..` needs no text file.
BUILTIN_TEXTS: dict[str, str] = {
    "en": "The quick brown fox jumps over the lazy dog. On the 12th of March, 1897, the committee met in the "
    "old library; its report (No. 44) listed £1,250 in debts and 37 new members. Please return the form "
    "before Friday - late entries cannot be accepted.",
    "fr": "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë au delà des îles. "
    "Le 3 août, la réunion eut lieu à l'hôtel de ville ; on y lut la lettre du maître d'école.",
    "de": "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. Die Wohlfahrt des Landes "
    "ſteht auf dem Spiele, ſagte der Herr Geheimrath; aͤltere Druͤcke ſchreiben das lange ſ.",
    "es": "El veloz murciélago hindú comía feliz cardillo y kiwi. La cigüeña tocaba el saxofón detrás "
    "del palenque de paja; ¿quién lo diría?",
    "el": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация южных губерний "
    "даст мощный толчок подъёму сельского хозяйства.",
    "pl": "Pchnąć w tę łódź jeża lub ośm skrzyń fig. Zażółć gęślą jaźń.",
    "cs": "Příliš žluťoučký kůň úpěl ďábelské ódy.",
}
LANGUAGES = tuple(BUILTIN_TEXTS)


def derive_seed(seed: int, index: int) -> int:
    """Independent per-sample seed: the same (seed, index) always gives the same sample."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "big")


def builtin_lines(language: str, rng: random.Random, min_words: int = 2, max_words: int = 9) -> str:
    """A random span of words from the built-in text of ``language``."""
    if language not in BUILTIN_TEXTS:
        raise ValueError(f"no built-in text for language {language!r} (have {', '.join(LANGUAGES)})")
    words = BUILTIN_TEXTS[language].split()
    k = rng.randint(min_words, min(max_words, len(words)))
    start = rng.randint(0, len(words) - k)
    return " ".join(words[start : start + k])


@functools.lru_cache(maxsize=4096)
def _candidates(text: str) -> tuple[Path, ...]:
    """Preferred text faces that cover ``text`` (font variety), else the first installed font that does."""
    preferred = [f for f in installed_fonts() if f.name in PREFERRED]
    found = fonts_covering(text, preferred)
    return tuple(found) if found else (choose_font(text),)


def synthetic_samples(
    texts: Iterable[str] | None = None,
    n: int = 100,
    seed: int = 0,
    *,
    languages: Iterable[str] | None = None,
    language: str | None = None,
    level: str = "line",
    lines_per_page: int = 8,
    augment: bool | Augment = False,
    font: str | Path | None = None,
    size: int | None = None,
    report: DataReport | None = None,
) -> Iterator[Sample]:
    """Up to ``n`` rendered samples. With ``texts``, sample i shows ``texts[i % len(texts)]`` (pages take
    ``lines_per_page`` consecutive texts); otherwise random spans of the built-in text of ``languages``.

    Images render lazily on first ``.image`` access (deterministic for a given seed). A text no installed font
    fully covers is reported in ``report`` (kind ``unrenderable_text``) and skipped, never drawn as tofu.
    """
    if level not in ("line", "page"):
        raise ValueError(f"level must be 'line' or 'page', got {level!r}")
    pool = [t for t in texts if t.strip()] if texts is not None else None
    if pool is not None and not pool:
        raise ValueError("synthetic_samples: texts is empty")
    langs = list(languages or ([language] if language else LANGUAGES))
    if pool is None:
        for lang in langs:
            if lang not in BUILTIN_TEXTS:
                raise ValueError(f"no built-in text for language {lang!r} (have {', '.join(LANGUAGES)})")
    for i in range(n):
        s = derive_seed(seed, i)
        rng = random.Random(s)
        lang = language if pool is not None else rng.choice(langs)
        k = lines_per_page if level == "page" else 1
        if pool is not None:
            lines = [pool[(i * k + j) % len(pool)] for j in range(k)]
        else:
            lines = [builtin_lines(lang, rng) for _ in range(k)]
        text = "\n".join(lines)
        sample_id = f"synth-{seed}-{i:07d}"
        try:
            chosen = choose_font(text, font) if font is not None else rng.choice(_candidates(text))
        except GlyphError as exc:
            if report is not None:
                report.skip(sample_id, str(exc), "synthetic", "unrenderable_text")
            continue
        px = size or (rng.randint(24, 40) if level == "line" else rng.randint(20, 30))
        if level == "line":
            loader = functools.partial(render_line, text, font=chosen, size=px, seed=s, augment=augment)
        else:
            loader = functools.partial(render_page, lines, font=chosen, size=px, seed=s, augment=augment)
        meta = {"font": chosen.name, "font_size": px, "seed": s, "dataset": "synthetic"}
        if font is not None and Path(font) != chosen:
            meta["font_fallback_from"] = Path(font).name
        yield Sample(
            id=sample_id,
            text=text,
            image_loader=loader,
            language=lang,
            subset="synthetic",
            level=level,
            meta=meta,
        )
