"""CER/WER agree with jiwer 4 (the reference) to 1e-9; edge cases have defined results."""

from __future__ import annotations

import random
import unicodedata

import jiwer
import pytest
from PIL import Image

from deepsynth.evaluation.metrics import (
    OCRMetrics,
    cer,
    char_edit_pairs,
    exact_match,
    has_repetition,
    ned,
    sample_cer,
    wer,
    word_units,
)

ALPHABET = "abcdeéèçßſüÄ xyz  \t.,;-ΑΒΓабв中文"


def _random_line(rng: random.Random, max_len: int = 40) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(0, 6)):
        pos = rng.randint(0, len(chars))
        op = rng.random()
        if op < 0.33 and pos < len(chars):
            chars[pos] = rng.choice(ALPHABET)
        elif op < 0.66:
            chars.insert(pos, rng.choice(ALPHABET))
        elif pos < len(chars):
            del chars[pos]
    return "".join(chars)


# jiwer's own documented cases (README / tests: "From WER and RIL to MER and WIL", input forms, empty refs)
JIWER_WER_CASES = [
    ("This is a test", "This is a test", 0.0),
    ("This is a test", "", 1.0),
    ("This is a test", "This test", 0.5),
    ("X", "X", 0.0),
    ("X", "X X Y Y", 3.0),
    ("X Y X", "X Z", 2 / 3),
    ("X", "Y", 1.0),
    ("X", "Y Z", 2.0),
    (["hello world", ""], ["hello world", "done"], 0.5),
    ("", "hello", 1.0),
    ("", "0 1 2 3", 4.0),
    (["", ""], ["", ""], 0.0),
]
JIWER_CER_CASES = [
    ("This is a test", "This is a test", 0 / 14),
    ("This is a test", "", 14 / 14),
    ("This is a test", "This test", 5 / 14),
    (["i", "am i good"], ["i am", "i good"], 0.6),
    (["am i good", "i"], ["i good", "i am"], 0.6),
    ("", "", 0.0),
    ("", "a", 1.0),
    ("", "abd", 3.0),
    ("a", "", 1.0),
    ("abc", "", 1.0),
]


@pytest.mark.parametrize(("ref", "hyp", "expected"), JIWER_WER_CASES)
def test_wer_documented_cases(ref, hyp, expected):
    assert wer(ref, hyp) == pytest.approx(expected, abs=1e-12)
    assert wer(ref, hyp) == pytest.approx(jiwer.wer(ref, hyp), abs=1e-9)


@pytest.mark.parametrize(("ref", "hyp", "expected"), JIWER_CER_CASES)
def test_cer_documented_cases(ref, hyp, expected):
    assert cer(ref, hyp) == pytest.approx(expected, abs=1e-12)
    assert cer(ref, hyp) == pytest.approx(jiwer.cer(ref, hyp), abs=1e-9)


def test_random_corpora_match_jiwer():
    rng = random.Random(1234)
    for _ in range(200):
        refs = [_random_line(rng) for _ in range(rng.randint(1, 12))]
        hyps = [_mutate(rng, r) if rng.random() < 0.8 else _random_line(rng) for r in refs]
        assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-9, rel=0)
        assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-9, rel=0)


def test_random_single_pairs_match_jiwer():
    rng = random.Random(99)
    for _ in range(500):
        ref, hyp = _random_line(rng, 25), _random_line(rng, 25)
        assert cer(ref, hyp) == pytest.approx(jiwer.cer(ref, hyp), abs=1e-9, rel=0)
        assert wer(ref, hyp) == pytest.approx(jiwer.wer(ref, hyp), abs=1e-9, rel=0)


def test_whitespace_tokenisation_is_jiwers():
    # single tab stays inside a word (jiwer splits on " " after collapsing runs of 2+ whitespace)
    assert word_units(" a\tb  c \t d ") == ["a\tb", "c", "d"]
    for ref, hyp in [("a\tb c", "a b c"), ("  a  b ", "a b"), ("a\u00a0b", "a b"), ("\n\nx y\n", "x y")]:
        assert wer(ref, hyp) == pytest.approx(jiwer.wer(ref, hyp), abs=1e-9)
        assert cer(ref, hyp) == pytest.approx(jiwer.cer(ref, hyp), abs=1e-9)


def test_rates_are_unbounded_micro_averages():
    assert cer("ab", "abxxxxxx") == 3.0  # 6 insertions / 2 reference chars
    # micro-average: long lines weigh more than short ones
    assert cer(["a", "abcdefghij"], ["b", "abcdefghij"]) == pytest.approx(1 / 11)


def test_mismatched_lengths_and_types_raise():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        cer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="hypothesis #1 is NoneType"):
        wer(["a", "b"], ["a", None])


def test_non_nfc_input_is_not_normalised_by_metrics():
    nfc = "café"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    # the metric compares code points, exactly like jiwer: é vs e + U+0301 is 1 substitution + 1 insertion
    assert cer(nfc, nfd) == pytest.approx(jiwer.cer(nfc, nfd)) == pytest.approx(2 / 4)
    assert OCRMetrics("nfc").summary()["normalize"] == "nfc"
    m = OCRMetrics("nfc")
    m.update(nfc, nfd)
    assert m.summary()["cer"] == 0.0


def test_mixed_scripts_and_very_long_lines():
    mixed = "Straße Ελλάδα Москва 東京 ſchön"
    assert cer(mixed, mixed.replace("ſ", "s")) == pytest.approx(1 / len(mixed))
    long_ref = "lorem ipsum dolor " * 20_000  # 360k characters
    long_hyp = long_ref.replace("dolor", "dolar", 3)
    assert cer(long_ref, long_hyp) == pytest.approx(3 / len(long_ref.strip()))
    assert wer(long_ref, long_hyp) == pytest.approx(3 / 60_000)


def test_sample_level_metrics():
    assert sample_cer("", "abc") == 3.0
    assert sample_cer("", "abc", clip=True) == 1.0
    assert sample_cer("abc", "abd", clip=True) == pytest.approx(1 / 3)
    assert ned("", "") == 0.0
    assert ned("abc", "") == 1.0
    assert ned("abcd", "abxdef") == pytest.approx(3 / 6)
    assert exact_match(" text ", "text") and not exact_match("text", "Text")


def test_repetition_detection():
    loop = "the end " * 12
    assert has_repetition(loop)
    assert has_repetition("ab" * 40)  # no spaces: character n-grams
    assert not has_repetition("a perfectly ordinary line of printed text with no loops at all")
    # repetition present in the reference too (a quoted refrain) is not a decoding failure
    assert not has_repetition(loop, loop)
    # dot leaders, rules and form blanks are content, spaced or not, with or without a reference
    for leaders in ("Contents " + ". " * 30 + "5", "Total " + "." * 40, "Name " + "_" * 60, "-" * 80):
        assert not has_repetition(leaders), leaders
        assert not has_repetition(leaders, "Contents 5"), leaders


@pytest.mark.parametrize(
    "text",
    ["the end " * 12, "ab" * 40, "Total " + "." * 40, "Contents " + ". " * 30 + "5", "Total due: 42 EUR " * 40,
     "a perfectly ordinary line of printed text", "Total due: 42 EUR" + " ." * 50],
)  # fmt: skip
def test_report_and_server_agree_on_repetition(text):
    """The report's repetition flag (OCRMetrics) and the server's guard (OCRService) are one detector."""
    from deepsynth.inference.service import OCRService
    from deepsynth.models.base import Prediction

    class Fixed:
        name = "fixed"

        def recognize(self, images, generation=None):
            return [Prediction(text=text, finished=True) for _ in images]

    from deepsynth.observability import Observability

    service = OCRService(Fixed(), trim_repetition=False, obs=Observability("test", metrics=False))
    (pred,) = service.recognize([Image.new("RGB", (8, 8))])
    report = OCRMetrics().update("a reference without loops", text)["repetition"]
    assert pred.meta["repetition"] == report


def test_char_edit_pairs_positions_and_kinds():
    assert char_edit_pairs("abc", "abc") == []
    assert sorted(char_edit_pairs("cat", "cut!")) == [("", "!"), ("a", "u")]
    assert char_edit_pairs("ab", "b") == [("a", "")]


def test_ocrmetrics_streaming_matches_corpus_functions():
    rng = random.Random(7)
    refs = [_random_line(rng) for _ in range(60)]
    hyps = [_mutate(rng, r) for r in refs]
    langs = [rng.choice(["en", "fr"]) for _ in refs]
    m = OCRMetrics()
    for i, (r, h, lang) in enumerate(zip(refs, hyps, langs, strict=True)):
        m.update(r, h, language=lang, subset=f"book{i % 3}", finished=None if i % 2 else i % 4 == 0)
    s = m.summary(bootstrap=200)
    assert s["n"] == 60
    assert s["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-9)
    assert s["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-9)
    en = [i for i, lang in enumerate(langs) if lang == "en"]
    assert s["per_language"]["en"]["cer"] == pytest.approx(
        jiwer.cer([refs[i] for i in en], [hyps[i] for i in en])
    )
    assert set(s["per_subset"]) == {"book0", "book1", "book2"}
    assert s["truncation_rate"] == pytest.approx(0.5)  # even i report finished; i % 4 == 2 are unfinished
    for key in (
        "cer",
        "wer",
        "ned",
        "exact_match",
        "repetition_rate",
        "truncation_rate",
        "mean_sample_cer_clipped",
    ):
        assert s[f"{key}_ci"][0] <= s[key] <= s[f"{key}_ci"][1], key  # every rate has its interval
    assert s["substitutions"] + s["deletions"] + s["insertions"] == s["char_errors"]
    m.reset()
    assert m.summary()["n"] == 0 and m.summary()["cer"] is None


def test_ocrmetrics_exact_match_and_empty_reference_sample():
    m = OCRMetrics()
    m.update("abc", "abc")
    m.update("", "xyz")  # empty reference inside a corpus: counted as 3 insertions
    s = m.summary()
    assert s["exact_match"] == 0.5
    assert s["cer"] == pytest.approx(jiwer.cer(["abc", ""], ["abc", "xyz"]))
    assert s["mean_sample_cer_clipped"] == 0.5
    assert s["truncation_rate"] is None
    with pytest.raises(TypeError, match="sample 'x1'"):
        m.update("a", None, sample_id="x1")


def test_every_unicode_whitespace_tokenises_like_jiwer():
    import sys

    spaces = [chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace()]
    for ws in spaces:
        for ref, hyp in [(f"a{ws}b c", "a b c"), (f"a {ws}b", f"{ws}a b{ws}"), (f"{ws}{ws}x", "x")]:
            assert wer(ref, hyp) == pytest.approx(jiwer.wer(ref, hyp), abs=1e-12), repr(ws)
            assert cer(ref, hyp) == pytest.approx(jiwer.cer(ref, hyp), abs=1e-12), repr(ws)
