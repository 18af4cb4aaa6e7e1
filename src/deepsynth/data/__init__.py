"""Data layer: one sample type, streaming sources, filters, splits, synthetic rendering."""

from deepsynth.data.sample import Sample, SampleError

__all__ = ["Sample", "SampleError"]
