"""Evaluation: jiwer-exact CER/WER on rapidfuzz, normalisation profiles, the evaluation harness and reports.

from deepsynth.evaluation import OCRMetrics, cer, wer, get_normalizer
from deepsynth.evaluation.harness import evaluate_engine, compare_runs
"""

from deepsynth.evaluation.metrics import OCRMetrics, cer, ned, sample_cer, wer
from deepsynth.evaluation.normalize import get_normalizer

__all__ = ["OCRMetrics", "cer", "get_normalizer", "ned", "sample_cer", "wer"]
