"""Data layer: one sample type, streaming sources, filters, splits, synthetic rendering."""

from deepsynth.data.augment import Augment
from deepsynth.data.dataset import SampleStream
from deepsynth.data.filters import SampleFilter, group_key, split_of
from deepsynth.data.images import DEFAULT_MAX_PIXELS, ImageRef
from deepsynth.data.open import open_sources, open_user_sources
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample, SampleError
from deepsynth.data.spec import SourceError, SourceSpec, parse_spec
from deepsynth.data.writers import open_writer

# rendering helpers need fonts; imported on use so `import deepsynth.data` stays light


def __getattr__(name: str):  # noqa: ANN202 - lazy module attributes
    if name in ("synthetic_samples", "BUILTIN_TEXTS"):
        from deepsynth.data import synth

        return getattr(synth, name)
    if name in ("render_line", "render_page"):
        from deepsynth.data import render

        return getattr(render, name)
    if name in ("GlyphError", "choose_font", "installed_fonts", "missing_glyphs"):
        from deepsynth.data import fonts

        return getattr(fonts, name)
    raise AttributeError(f"module 'deepsynth.data' has no attribute {name!r}")


__all__ = [
    "Augment",
    "BUILTIN_TEXTS",
    "GlyphError",
    "choose_font",
    "installed_fonts",
    "missing_glyphs",
    "open_writer",
    "render_line",
    "render_page",
    "synthetic_samples",
    "DEFAULT_MAX_PIXELS",
    "DataReport",
    "ImageRef",
    "Sample",
    "SampleError",
    "SampleFilter",
    "SampleStream",
    "SourceError",
    "SourceSpec",
    "group_key",
    "open_sources",
    "open_user_sources",
    "parse_spec",
    "split_of",
]
