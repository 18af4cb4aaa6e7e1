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


def test_worst_cards_put_every_image_on_its_own_row_and_single_groups_get_no_chart(shared_data):
    import json
    import re

    src = shared_data / "gt4histocr_dta19_lines"
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()[:3]]
    records = [{"id": r["id"], "ref": r["text"], "hyp": r["text"][: 5 * (i + 1)], "image": str(src / r["image"]),
                "subset": r["subset"]} for i, r in enumerate(rows)]  # fmt: skip
    records.append({"id": "no-image", "ref": "abc", "hyp": "xyz", "subset": "s"})
    group = {"cer": 0.5, "wer": 0.5, "ned": 0.4, "exact_match": 0.0, "n": 2}
    result = {"engine": "x", "n": 4, "dataset": ["d"], "per_language": {"de": group},
              "per_subset": {"a": group, "b": {**group, "cer": 0.1}}}  # fmt: skip
    page = render_report(result, records)
    cards = re.findall(r"<div class=sample>(.*?)<div class=diff>", page)
    assert len(cards) == 4
    for card in cards:  # the same layout whether or not the image exists
        assert re.fullmatch(
            r"<div class=head>.*?</div><div class=img>(<img [^>]+>|<p class=meta>.*?</p>)</div>", card
        )
    assert sum("data:image/jpeg;base64," in c for c in cards) == 3
    assert "display:block" in page
    assert (
        "<h3>CER by subset</h3>" in page and "<h3>CER by language</h3>" not in page
    )  # one language: no chart
    assert "<td class=l>de</td>" in page  # ... but still its table row
