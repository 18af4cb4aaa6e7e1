"""Fit a saved model's LM reader on training texts and choose its weights on validation lines (``lm:``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsynth.data.sample import Sample
from deepsynth.training.config import TrainConfig

log = logging.getLogger(__name__)


def fit_lm_reader(
    model_dir: str | Path, cfg: TrainConfig, train: Sequence[Sample], val: Sequence[Sample]
) -> dict[str, Any] | None:
    """Load the model in ``model_dir``, fit its LM reader on ``train``'s texts, choose the ``cfg.lm`` weights by
    ``cfg.eval`` CER on ``val`` and write the choice into ``model_dir``. Returns the model's report (what was
    tried and chosen, ``seconds``), or None without validation lines or for a family that reads without one."""
    from deepsynth.evaluation.metrics import cer
    from deepsynth.evaluation.normalize import get_normalizer
    from deepsynth.models.registry import load_engine
    from deepsynth.training.runtime import ensure_trainable

    if not val:
        log.info("LM reader: no validation lines to choose its weights on; the model reads greedily")
        return None
    t0 = time.perf_counter()
    norm = get_normalizer(cfg.eval.normalize)
    refs = [norm(s.text) for s in val]
    engine = ensure_trainable(load_engine(str(model_dir)), cfg.model.family)
    report = engine.fit_lm_decoder(
        [s.text for s in train], [s.image for s in val], lambda hyps: cer(refs, [norm(h) for h in hyps]), cfg.lm,
        save_to=model_dir,
    )  # fmt: skip
    if report is None:
        log.info("LM reader: model family %s reads without one", cfg.model.family)
        return None
    report["seconds"] = round(time.perf_counter() - t0, 2)
    greedy, chosen = report["tried"][0]["score"], report["chosen"]
    if chosen["greedy"]:
        log.info(
            "LM reader: no weights beat greedy reading on validation (%.2f%%); kept greedy", 100 * greedy
        )
    else:
        log.info(
            "LM reader (%d-gram of %d training lines): validation %s %.2f%% -> %.2f%% with alpha %.2g, "
            "beta %.2g (%.1f s)", report["order"], report["texts"], cfg.eval.metric, 100 * greedy,
            100 * chosen["score"], chosen["alpha"], chosen["beta"], report["seconds"],
        )  # fmt: skip
    return report
