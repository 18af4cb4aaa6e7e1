"""Normalisation profiles: composable primitives and presets that reproduce jiwer / OmniDocBench / olmOCR / PaddleOCR."""

from __future__ import annotations

import random
import unicodedata

import jiwer
import pytest

from deepsynth.evaluation.metrics import OCRMetrics, cer
from deepsynth.evaluation.normalize import available_profiles, get_normalizer, profile_steps, register_step


def test_none_is_identity_and_profile_is_recorded():
    norm = get_normalizer("none")
    assert norm("  Ab\u0301  ") == "  Ab\u0301  "
    assert norm.profile == "none" and norm.steps == []
    assert get_normalizer("nfkc+casefold+collapse").steps == ["nfkc", "casefold", "collapse"]


def test_primitives():
    assert get_normalizer("nfc")("e\u0301") == "é"
    assert get_normalizer("nfkc")("ﬁ ſ ²") == "fi s 2"
    assert get_normalizer("collapse")("  a \t b\n\nc ") == "a b c"
    assert get_normalizer("nospace")(" a b\tc ") == "abc"
    assert get_normalizer("casefold")("Straße") == "strasse"
    assert get_normalizer("strip_punct")("«Hé», dit-il… ¿qué?") == "Hé ditil qué"
    assert get_normalizer("strip_marks")("Ça été") == "Ca ete"
    assert get_normalizer("hyphen")("ef¬") == "ef-"
    assert get_normalizer("dehyphen")("exam-\nple and ef¬ \n fort") == "example and effort"


def test_order_of_composition_matters():
    assert get_normalizer("strip_punct+collapse")("a , b") == "a b"
    assert get_normalizer("collapse+strip_punct")("a , b") == "a  b"


def test_unknown_step_names_the_step_and_lists_known():
    with pytest.raises(ValueError, match=r"unknown normalisation step 'nfx'.*known: .*casefold"):
        get_normalizer("nfc+nfx")


def test_jiwer_presets_match_jiwer_transforms():
    rng = random.Random(0)
    alphabet = "abcXYZ '’\t\n  ,.<>[]sndtlrevmAB"
    default = jiwer.Compose([jiwer.RemoveMultipleSpaces(), jiwer.Strip()])
    standard = jiwer.Compose([
        jiwer.ToLowerCase(), jiwer.ExpandCommonEnglishContractions(), jiwer.RemoveKaldiNonWords(),
        jiwer.RemoveWhiteSpace(replace_by_space=True), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
    ])  # fmt: skip
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert get_normalizer("jiwer")(text) == default(text)
        assert get_normalizer("jiwer_standard")(text) == standard(text)
    assert get_normalizer("jiwer_standard")("She'll go, won't [noise] she?") == "she will go, will not she?"


def test_omnidocbench_text_block_normalisation():
    norm = get_normalizer("omnidocbench")
    # only word characters and CJK survive: spaces, punctuation and escaped tabs/newlines go
    assert norm("Hello, World!\\n 你好，世界。 x_1 café") == "HelloWorld你好世界x_1café"
    assert norm("a\tb/nc") == "abc"
    # inline LaTeX becomes Unicode first (pylatexenc), as OmniDocBench's textblock2unicode does
    assert norm("Let $\\alpha_1$ be \\(\\beta^2\\) or $x$.") == "Letα_1beβ2orx"
    latex = get_normalizer("latex_inline")
    assert latex("with $\\sqrt{x}$ for $10$") == "with √(x) for $10$"  # no \\ ^ _ in $10$: kept
    assert latex("$5 and $x^2$") == "$5 and $x^2$"  # dollars pair left to right, as in OmniDocBench
    assert latex("$a\\_b$ and $\\frac{a}{b}$") == "$a\\_b$ and a/b"  # escaped _ dropped: no math left


def test_olmocr_bench_normalisation():
    norm = get_normalizer("olmocr")
    assert norm("**Bold** and _it_<br/>“quote” — 5\u00b5m") == 'Bold and it "quote" - 5\u03bcm'
    assert norm("  two   spaces\n") == " two spaces "  # olmOCR collapses but does not strip
    assert norm("e\u0301") == "é"


def test_paddleocr_presets():
    assert get_normalizer("paddleocr")("a b\tc") == "ab\tc"  # RecMetric ignore_space removes ' ' only
    assert get_normalizer("paddleocr_filter")("Hé llo-42!") == "hllo42"


def test_ocr_standard_keeps_historical_letters():
    norm = get_normalizer("ocr_standard")
    assert norm(" ſchön ef¬  x ") == "ſchön ef- x"  # NFKC would turn ſ into s: deliberately not used


def test_register_step_and_metrics_integration():
    register_step("long_s", lambda s: s.replace("ſ", "s"))
    assert "long_s" in available_profiles()
    assert profile_steps("long_s+nfc") == ["long_s", "nfc"]
    m = OCRMetrics("long_s+ocr_standard")
    m.update("Waſſer ¬", "Wasser -")
    assert m.summary()["cer"] == 0.0 and m.summary()["normalize"] == "long_s+ocr_standard"
    with pytest.raises(ValueError, match="no '\\+'"):
        register_step("a+b", str.lower)


def test_normalisation_changes_cer_as_expected():
    ref, hyp = unicodedata.normalize("NFD", "Élan vital"), "élan  vital"
    assert cer(ref, hyp) > 0
    norm = get_normalizer("nfc+casefold+collapse")
    assert cer(norm(ref), norm(hyp)) == 0.0
