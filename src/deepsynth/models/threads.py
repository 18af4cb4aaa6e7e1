"""Keep torch's intra-op threads within ``OMP_THREAD_LIMIT``.

Tesseract users are told to set ``OMP_THREAD_LIMIT=1``. With that limit and torch running 2+ threads, oneDNN's
convolution backward on CPU never finishes (seen here: a PP-OCRv6 training step that takes 4.5 s ran for over
8 minutes). Every torch model in DeepSynth calls :func:`respect_omp_thread_limit` when it is built or trained.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def omp_thread_limit() -> int | None:
    raw = os.environ.get("OMP_THREAD_LIMIT", "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None


def respect_omp_thread_limit() -> int:
    """Cap ``torch.get_num_threads()`` at OMP_THREAD_LIMIT (if set); returns the thread count in force."""
    import torch

    limit = omp_thread_limit()
    threads = torch.get_num_threads()
    if limit is not None and threads > limit:
        log.warning("OMP_THREAD_LIMIT=%d: using %d torch thread(s) instead of %d", limit, limit, threads)
        torch.set_num_threads(limit)
        return limit
    return threads
