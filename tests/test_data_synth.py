"""Synthetic renderer: glyph coverage, font fallback (Greek, Cyrillic, long s), no tofu, seeded determinism."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.data import DataReport, open_sources
from deepsynth.data.fonts import GlyphError, choose_font, installed_fonts, missing_glyphs
from deepsynth.data.render import render_line
from deepsynth.data.synth import synthetic_samples

UNASSIGNED = "\U000f0000"  # private-use plane 16: no system font has it


@pytest.fixture(scope="module")
def fonts():
    found = installed_fonts()
    if not found:
        pytest.skip("no fonts installed (apt-get install fonts-dejavu-core fonts-noto-core)")
    return found


def _cmap(path) -> set[int]:
    with TTFont(str(path)) as f:
        return set(f.getBestCmap())


def _font_lacking(fonts, text):
    for f in fonts:
        cmap = _cmap(f)
        if cmap and any(ord(c) not in cmap for c in text) and ord("a") in cmap:
            return f
    pytest.skip(f"every installed font covers {text!r}")


def _raw(text, font, size=32):
    f = ImageFont.truetype(str(font), size)
    img = Image.new("L", (size * 2 * max(1, len(text)), size * 2), 255)
    ImageDraw.Draw(img).text((4, 4), text, font=f, fill=0)
    return np.asarray(img)


def test_missing_glyphs_matches_the_font_cmap(fonts):
    font = _font_lacking(fonts, "ſ")
    assert missing_glyphs(font, "ſa b") == {"ſ"}  # space needs no glyph
    assert missing_glyphs(font, "abc") == set()


@pytest.mark.parametrize(
    "text", ["Ξεσκεπάζω την ψυχοφθόρα", "Съешь же ещё этих булок", "ſchöne Grüße", "daß er ſich aͤndert"]
)
def test_fallback_font_has_every_glyph_and_renders_no_tofu(fonts, text):
    lacking = _font_lacking(fonts, text)
    chosen = choose_font(text, preferred=lacking)
    assert chosen != lacking
    cmap = _cmap(chosen)
    assert all(ord(c) in cmap for c in text if not c.isspace())
    # what tofu looks like in the lacking font: its rendering of the missing char equals its .notdef box
    # (checked on a base character; a lone combining mark is shaped differently)
    miss = [c for c in text if not c.isspace() and ord(c) not in _cmap(lacking)]
    base = [c for c in miss if not unicodedata.category(c).startswith("M")]
    if base:
        assert np.array_equal(_raw(base[0], lacking), _raw(UNASSIGNED, lacking))
        # the fallback font draws a real glyph instead
        assert not np.array_equal(_raw(base[0], chosen), _raw(UNASSIGNED, lacking))
    img = render_line(text, font=lacking)
    arr = np.asarray(img.convert("L"))
    assert arr.min() < 100 < arr.max() and img.width > img.height


def test_text_no_font_covers_is_refused_and_skipped(fonts):
    with pytest.raises(GlyphError, match="U\\+F0000"):
        render_line(f"abc {UNASSIGNED}")
    report = DataReport()
    out = list(synthetic_samples(["fine text", f"bad {UNASSIGNED}", "also fine"], n=3, report=report))
    assert [s.text for s in out] == ["fine text", "also fine"]
    assert [(s["id"], s["kind"]) for s in report.skipped] == [("synth-0-0000001", "unrenderable_text")]


def test_render_is_deterministic_with_seed(fonts):
    a = np.asarray(render_line("Zwölf Boxkämpfer", seed=5, augment=True))
    b = np.asarray(render_line("Zwölf Boxkämpfer", seed=5, augment=True))
    c = np.asarray(render_line("Zwölf Boxkämpfer", seed=6, augment=True))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_synthetic_samples_are_seeded_lazy_and_multilingual(fonts):
    def make(seed):
        return list(synthetic_samples(n=12, seed=seed, augment=True))

    first, again, other = make(1), make(1), make(2)
    assert first[0]._image is None  # rendered on first .image access
    assert [s.text for s in first] == [s.text for s in again]
    assert all(
        np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(first, again, strict=True)
    )
    assert [s.text for s in first] != [s.text for s in other]
    assert len({s.language for s in first}) > 2
    for s in first:
        assert not missing_glyphs(next(f for f in fonts if f.name == s.meta["font"]), s.text)


def test_texts_are_used_verbatim_and_pages_stack_lines(fonts):
    lines = [s.text for s in synthetic_samples(["one", "two", "three"], n=5, language="en")]
    assert lines == ["one", "two", "three", "one", "two"]
    (page,) = synthetic_samples(["alpha", "beta", "gamma"], n=1, level="page", lines_per_page=3)
    assert page.text == "alpha\nbeta\ngamma" and page.level == "page"
    assert page.image.height > 3 * page.meta["font_size"]


def test_cli_synth_writes_readable_dataset(fonts, tmp_path):
    text_file = tmp_path / "t.txt"
    text_file.write_text("Ξεσκεπάζω\n\nſchöne Grüße\nplain\n", encoding="utf-8")
    res = CliRunner().invoke(
        app,
        ["data", "synth", "--text-file", str(text_file), "--lang", "xx", "--out", str(tmp_path / "o"),
         "--to", "parquet", "--n", "6", "--seed", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = DataReport()
    back = list(open_sources([str(tmp_path / "o")], report=report, decode=True))
    assert [s.text for s in back] == ["Ξεσκεπάζω", "ſchöne Grüße", "plain"] * 2
    assert report.n_skipped == 0 and {s.language for s in back} == {"xx"}
    res = CliRunner().invoke(
        app, ["data", "synth", "--out", str(tmp_path / "p"), "--lang", "tlh", "--n", "2"]
    )
    assert res.exit_code == 2 and "tlh" in res.output
