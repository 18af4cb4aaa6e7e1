"""DataReport: what a stream of samples contained and which samples were skipped (by id, reason, source)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.data.sample import Sample

# Kinds of bad sample; ``DataReport.skip`` infers one from the reason text when not given.
SKIP_KINDS = (
    "invalid_json",
    "missing_field",
    "invalid_field",
    "empty_text",
    "duplicate_id",
    "path_escape",
    "missing_image",
    "too_many_pixels",
    "corrupt_image",
    "unrenderable_text",
    "other",
)


def _infer_kind(reason: str) -> str:
    r = re.split(r"[:(]", reason, maxsplit=1)[0].lower()  # the words before any path or detail
    for key, kind in (
        ("json", "invalid_json"),
        ("missing field", "missing_field"),
        ("empty text", "empty_text"),
        ("duplicate id", "duplicate_id"),
        ("escapes", "path_escape"),
        ("not found", "missing_image"),
        ("pixel", "too_many_pixels"),
        ("unreadable", "corrupt_image"),
        ("glyph", "unrenderable_text"),
    ):
        if key in r:
            return kind
    return "other"


@dataclass
class DataReport:
    """Counts of good samples (per dataset/language/subset/doc type/level) and the list of skipped ones."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    n_ok: int = 0
    by_dataset: Counter = field(default_factory=Counter)
    by_language: Counter = field(default_factory=Counter)
    by_subset: Counter = field(default_factory=Counter)
    by_doc_type: Counter = field(default_factory=Counter)
    by_level: Counter = field(default_factory=Counter)
    text_chars: int = 0
    charset: Counter = field(default_factory=Counter)

    def skip(self, sample_id: str, reason: str, source: str = "", kind: str | None = None) -> None:
        """Record a skipped sample; ``kind`` is one of SKIP_KINDS (inferred from ``reason`` if None)."""
        self.skipped.append(
            {
                "id": str(sample_id),
                "reason": reason,
                "source": str(source),
                "kind": kind or _infer_kind(reason),
            }
        )

    def count(self, sample: Sample) -> None:
        """Record a good sample."""
        self.n_ok += 1
        self.by_dataset[str(sample.meta.get("dataset", ""))] += 1
        self.by_language[sample.language or "?"] += 1
        self.by_subset[sample.subset or "?"] += 1
        self.by_doc_type[sample.doc_type or "?"] += 1
        self.by_level[sample.level or "?"] += 1
        self.text_chars += len(sample.text)
        self.charset.update(sample.text)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def skipped_by_kind(self) -> dict[str, int]:
        return dict(Counter(s["kind"] for s in self.skipped).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_ok": self.n_ok,
            "n_skipped": self.n_skipped,
            "skipped_by_kind": self.skipped_by_kind(),
            "by_dataset": dict(self.by_dataset.most_common()),
            "by_language": dict(self.by_language.most_common()),
            "by_subset": dict(self.by_subset.most_common()),
            "by_doc_type": dict(self.by_doc_type.most_common()),
            "by_level": dict(self.by_level.most_common()),
            "text_chars": self.text_chars,
            "n_distinct_chars": len(self.charset),
            "skipped": self.skipped,
        }

    def write_json(self, path: str | Path, **extra: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # streamed to the file: a million skipped rows never sit in one string
        with path.open("w", encoding="utf-8") as fh:
            json.dump({**extra, **self.to_dict()}, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        return path

    def renderables(self, max_skipped: int = 20) -> list[Any]:
        """Rich tables: counts, then the first ``max_skipped`` skipped samples."""
        from rich.table import Table

        counts = Table(title=f"{self.n_ok} good samples, {self.n_skipped} skipped", title_justify="left")
        for col in ("group", "value", "samples"):
            counts.add_column(col, justify="right" if col == "samples" else "left")
        for group, counter in (
            ("dataset", self.by_dataset),
            ("language", self.by_language),
            ("level", self.by_level),
            ("subset", self.by_subset),
            ("doc_type", self.by_doc_type),
        ):
            items = counter.most_common()
            shown = items[:12]
            for value, n in shown:
                counts.add_row(group, value, str(n))
            if len(items) > len(shown):
                counts.add_row(
                    group, f"... {len(items) - len(shown)} more", str(sum(n for _, n in items[12:]))
                )
        out: list[Any] = [counts]
        if self.skipped:
            bad = Table(title="skipped samples", title_justify="left")
            for col in ("kind", "id", "reason", "source"):
                bad.add_column(col, overflow="fold")
            for s in self.skipped[:max_skipped]:
                bad.add_row(s["kind"], s["id"], s["reason"], s["source"])
            if self.n_skipped > max_skipped:
                bad.add_row("...", f"{self.n_skipped - max_skipped} more", "see report JSON", "")
            kinds = ", ".join(f"{k}: {n}" for k, n in self.skipped_by_kind().items())
            bad.caption = f"by kind: {kinds}"
            out.append(bad)
        return out

    def print_summary(self, console: Any = None, max_skipped: int = 20) -> None:
        """Print the summary tables with rich (colours when the terminal supports them)."""
        from rich.console import Console

        console = console or Console()
        for r in self.renderables(max_skipped):
            console.print(r)

    def summary(self, max_skipped: int = 20) -> str:
        """The summary tables rendered as plain text."""
        from rich.console import Console

        console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)
        self.print_summary(console, max_skipped)
        return console.file.getvalue()
