"""Data layer: one sample type, streaming sources, filters, splits, synthetic rendering."""

from deepsynth.data.filters import SampleFilter, group_key, split_of
from deepsynth.data.images import DEFAULT_MAX_PIXELS, ImageRef
from deepsynth.data.open import open_sources
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample, SampleError
from deepsynth.data.spec import SourceError, SourceSpec, parse_spec

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DataReport",
    "ImageRef",
    "Sample",
    "SampleError",
    "SampleFilter",
    "SourceError",
    "SourceSpec",
    "group_key",
    "open_sources",
    "parse_spec",
    "split_of",
]
