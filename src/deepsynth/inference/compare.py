"""Two models' transcriptions of the same document side by side, lines paired and differences marked.

Lines are paired in reading order (difflib on the line texts: equal and changed runs pair one to one, a line
only one model found stands alone); inside a pair the characters are aligned as the evaluation aligns a
hypothesis with its reference (minimal edits), with what only A read in ``<del>`` and what only B read in
``<ins>``.
"""

from __future__ import annotations

import difflib
import html
import itertools
from collections.abc import Sequence

from deepsynth.evaluation.alignment import align, error_counts

STYLE = (
    "<style>.ds-cmp{border-collapse:collapse;width:100%;font-family:ui-monospace,Menlo,Consolas,monospace}"
    ".ds-cmp td,.ds-cmp th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;"
    "white-space:pre-wrap}.ds-cmp th{background:#f4f4f4;font-family:system-ui,sans-serif}"
    ".ds-cmp td.n{color:#888;text-align:right;width:2.5rem}.ds-cmp tr.same td{color:#555}"
    ".ds-cmp del,.ds-sum del{background:#ffd7d5;color:#82071e;text-decoration:line-through}"
    ".ds-cmp ins,.ds-sum ins{background:#ccffd8;color:#055d20;text-decoration:none;font-weight:600}"
    ".ds-sum{font-family:system-ui,sans-serif;margin:.3rem 0}</style>"
)


def pair_lines(a: Sequence[str], b: Sequence[str]) -> list[tuple[int | None, int | None]]:
    """Index pairs (i in ``a``, j in ``b``) in reading order; None where a line has no counterpart."""
    pairs: list[tuple[int | None, int | None]] = []
    matcher = difflib.SequenceMatcher(None, list(a), list(b), autojunk=False)
    for _, i1, i2, j1, j2 in matcher.get_opcodes():
        pairs += itertools.zip_longest(range(i1, i2), range(j1, j2))
    return pairs


def marked(a: str, b: str) -> tuple[str, str]:
    """``a`` and ``b`` as HTML: characters only ``a`` has in ``<del>``, only ``b`` has in ``<ins>``."""
    left, right = [], []
    for op in align(a, b):
        if op.op == "equal":
            left.append(html.escape(op.ref))
            right.append(html.escape(op.hyp))
            continue
        if op.ref:
            left.append(f"<del>{html.escape(op.ref)}</del>")
        if op.hyp:
            right.append(f"<ins>{html.escape(op.hyp)}</ins>")
    return "".join(left).replace("</del><del>", ""), "".join(right).replace("</ins><ins>", "")


def comparison_html(name_a: str, text_a: str, name_b: str, text_b: str) -> str:
    """A table of the two transcriptions line by line, differing lines marked, under a one-line summary."""
    a, b = text_a.splitlines(), text_b.splitlines()
    rows, differ, edits = [], 0, 0
    for n, (i, j) in enumerate(pair_lines(a, b), 1):
        la, lb = a[i] if i is not None else "", b[j] if j is not None else ""
        if la.strip() == lb.strip():
            rows.append(f"<tr class=same><td class=n>{n}</td><td>{html.escape(la)}</td><td>{html.escape(lb)}</td></tr>")  # fmt: skip
            continue
        counts = error_counts(align(la, lb))
        differ, edits = (
            differ + 1,
            edits + counts["substitutions"] + counts["deletions"] + counts["insertions"],
        )
        cell_a, cell_b = marked(la, lb)
        rows.append(f"<tr class=diff><td class=n>{n}</td><td>{cell_a}</td><td>{cell_b}</td></tr>")
    total = len(rows)
    summary = (
        f"B reads {differ} of {total} line{'s' if total != 1 else ''} differently from A "
        f"({edits} character edit{'s' if edits != 1 else ''}): <del>only A</del> <ins>only B</ins>"
        if differ
        else f"A and B read all {total} line{'s' if total != 1 else ''} the same."
    )
    return (
        f"{STYLE}<p class=ds-sum>{summary}</p><table class=ds-cmp><tr><th></th><th>A: {html.escape(name_a)}"
        f"</th><th>B: {html.escape(name_b)}</th></tr>{''.join(rows)}</table>"
    )
