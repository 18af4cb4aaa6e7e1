"""report.html pieces: escaped aligned diffs and readable confusion cells."""

from __future__ import annotations

from deepsynth.evaluation.report import _char_cell, diff_html, render_report


def test_diff_html_marks_edits_and_escapes_markup():
    out = diff_html("a<b> & c", "a<b> + c!")
    assert out == "a&lt;b&gt; <del>&amp;</del><ins>+</ins> c<ins>!</ins>"
    assert diff_html("same", "same") == "same"
    assert diff_html("", "new") == "<ins>new</ins>" and diff_html("old", "") == "<del>old</del>"


def test_confusion_cells_show_code_points_for_lookalikes():
    assert _char_cell("Q") == "<code>Q</code>"
    assert _char_cell("ſ") == "<code>ſ</code> <small>U+017F</small>"
    assert _char_cell(" ") == "<code>␣</code> <small>U+0020</small>"
    assert _char_cell("") == "<i>(none)</i>"


def test_render_report_without_images_or_scores():
    html = render_report({"engine": "x", "n": 0, "dataset": []}, [], normalize="nfc")
    assert "normalisation profile: <b>nfc</b>" in html and "Worst 0 samples" in html
