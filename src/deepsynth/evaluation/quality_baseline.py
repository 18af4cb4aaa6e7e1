"""A model's label-free quality signals at promotion time, as Prometheus recording rules.

In production there are no references, so drift is watched on signals the server exports per model and doc
type (``deepsynth_output_confidence``, ``deepsynth_empty_outputs_total``, ``deepsynth_repetitions_total``,
``deepsynth_truncations_total`` over ``deepsynth_outputs_total``). The alert rules in ``deploy/alerts.yml``
compare them with ``deepsynth:quality_baseline{model, doc_type, signal}``: the values of the same signals on
the evaluation run that promoted the model, written here as constant recording rules
(``deploy/baselines/*.yml``). Repetition and truncation are flagged as the server flags them (generative
outputs only, the serving guard's detector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deepsynth.evaluation.runs import check_group_keys, load_scored_run

SIGNALS = ("mean_confidence", "empty_rate", "repetition_rate", "truncation_rate")
RECORD = "deepsynth:quality_baseline"


def _signals(records: list[dict[str, Any]]) -> dict[str, float]:
    from deepsynth.models.generation import GenerationConfig
    from deepsynth.models.repetition import find_repetition

    gen = GenerationConfig()
    conf = [float(r["confidence"]) for r in records if isinstance(r.get("confidence"), int | float)]
    generative = [r for r in records if r.get("finished") is not None]
    out = {"empty_rate": sum(not r["hyp"].strip() for r in records) / len(records)}
    if conf:
        out["mean_confidence"] = sum(conf) / len(conf)
    out["repetition_rate"] = sum(
        find_repetition(r["hyp"], gen.repetition_ngram, gen.repetition_threshold) for r in generative
    ) / len(records)
    out["truncation_rate"] = sum(r["finished"] is False for r in generative) / len(records)
    return out


def quality_baseline(run_dir: str | Path, *, doc_type_key: str | None = None) -> dict[str, dict[str, Any]]:
    """{doc type: {signal: value, "n": samples}} of a finished run; without ``doc_type_key`` every sample is
    doc type ``unknown`` (what the server labels requests that send no ``doc_type``)."""
    run = load_scored_run(run_dir)
    if doc_type_key:
        check_group_keys([run], [doc_type_key])
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in run.records.values():
        key = str(r.get(doc_type_key) or "unknown") if doc_type_key else "unknown"
        groups.setdefault(key, []).append(r)
    return {k: {"n": len(v), **_signals(v)} for k, v in sorted(groups.items())}


def baseline_rules(baseline: dict[str, dict[str, Any]], model: str, source: str = "") -> str:
    """Prometheus rules file: one constant ``deepsynth:quality_baseline`` series per doc type and signal."""
    rules = [
        {"record": RECORD, "expr": f"vector({values[signal]:.6g})",
         "labels": {"model": model, "doc_type": doc_type, "signal": signal}}
        for doc_type, values in baseline.items()
        for signal in SIGNALS
        if signal in values
    ]  # fmt: skip
    counts = ", ".join(f"{k}: {v['n']}" for k, v in baseline.items())
    head = f"# Quality signals of {model} at promotion time, from {source or 'an evaluation run'} ({counts} samples).\n"
    return head + yaml.safe_dump({"groups": [{"name": f"deepsynth-quality-baseline-{model}", "rules": rules}]},
                                 sort_keys=False, allow_unicode=True)  # fmt: skip
