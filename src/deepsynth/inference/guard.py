"""olmOCR-style retry policy for generative OCR outputs (the repetition detector is
:mod:`deepsynth.models.repetition`, shared with the evaluation report).

:func:`retry_generation` gives the decoding settings for retry attempt ``k`` (olmOCR retries unfinished pages
with sampling at rising temperature; we also forbid the repeated n-gram on retries).
"""

from __future__ import annotations

import dataclasses

from deepsynth.models.generation import GenerationConfig

RETRY_TEMPERATURES = (0.1, 0.2, 0.3, 0.5, 0.8, 1.0)


def retry_generation(base: GenerationConfig, attempt: int, *, repetition: bool) -> GenerationConfig:
    """Decoding settings for retry ``attempt`` (1-based): sampling at rising temperature; on repetition also
    forbid repeated n-grams and add a mild repetition penalty."""
    temperature = RETRY_TEMPERATURES[min(attempt, len(RETRY_TEMPERATURES)) - 1]
    changes: dict[str, object] = {"do_sample": True, "temperature": temperature, "num_beams": 1}
    if repetition:
        changes["no_repeat_ngram_size"] = max(base.no_repeat_ngram_size, base.repetition_ngram)
        changes["repetition_penalty"] = max(base.repetition_penalty, 1.05)
    return dataclasses.replace(base, **changes)
