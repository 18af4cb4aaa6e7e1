"""Prometheus metrics of the improvement loop, computed after every pass from its state, run records and registry.

Every series carries ``loop`` (the config's ``name``); per-type series carry ``doc_type``:

* ``deepsynth_loop_labelled_documents`` / ``_labelled_samples``: labelled so far;
* ``deepsynth_loop_new_documents``: new since the type's last run (what the trigger counts);
* ``deepsynth_loop_holdout_samples``: holdout size; ``deepsynth_loop_trigger_ready``: 1 when the trigger would fire;
* ``deepsynth_loop_runs_triggered_total`` / ``_runs_promoted_total`` / ``_runs_rejected_total``: counted from the
  run records in the work directory, so they survive restarts and one-shot ``loop run`` processes;
* ``deepsynth_loop_champion_holdout_cer{model}`` and ``deepsynth_loop_champion_version{model}``: the champion
  serving the type (absent while the base model serves it);
* ``deepsynth_loop_pending_runs``, ``deepsynth_loop_inbox_entries{status}``,
  ``deepsynth_loop_last_pass_timestamp_seconds``, ``deepsynth_loop_last_pass_duration_seconds``.

Published as ``WORKDIR/metrics.prom`` (or ``textfile``: point it into node_exporter's textfile directory), on
``/metrics`` at ``addr:port`` (``loop watch --metrics-port``) and pushed to ``DEEPSYNTH_PUSHGATEWAY_URL`` when
set (job ``deepsynth-loop``, grouped by ``loop``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from deepsynth import envs
from deepsynth.loop.config import LoopConfig
from deepsynth.observability.publish import MetricsPublisher

TEXTFILE = "metrics.prom"

# status row key -> (gauge, help) for the per-type counts
_PER_TYPE = {
    "documents": (
        "deepsynth_loop_labelled_documents",
        "Labelled documents of the type (page ids, else samples).",
    ),
    "labelled": ("deepsynth_loop_labelled_samples", "Labelled samples of the type."),
    "new_documents": ("deepsynth_loop_new_documents", "Documents labelled since the type's last run."),
    "holdout": ("deepsynth_loop_holdout_samples", "Samples of the type in its holdout."),
    "would_fire": ("deepsynth_loop_trigger_ready", "1 when the type's trigger would fire on the next pass."),
}
_RUNS = ("triggered", "promoted", "rejected")


def loop_families(cfg: LoopConfig, *, pass_seconds: float | None = None) -> list[Metric]:
    """The loop's metric families now (reads ``state.json``, the run records and the registry)."""
    from deepsynth.loop.runner import history, status
    from deepsynth.loop.state import load_state

    loop = [cfg.name]
    rows = status(cfg)
    out: list[Metric] = []
    for key, (name, doc) in _PER_TYPE.items():
        fam = GaugeMetricFamily(name, doc, labels=["loop", "doc_type"])
        for r in rows:
            fam.add_metric([*loop, r["doc_type"]], float(r[key]))
        out.append(fam)
    runs = {what: dict.fromkeys((r["doc_type"] for r in rows), 0) for what in _RUNS}
    for record in history(cfg):
        for t in record["types"]:
            runs["triggered"][t] = runs["triggered"].get(t, 0) + 1
            if record.get("decision") in _RUNS:
                runs[record["decision"]][t] = runs[record["decision"]].get(t, 0) + 1
    for what, counts in runs.items():
        fam = CounterMetricFamily(
            f"deepsynth_loop_runs_{what}", f"Loop runs {what}, by type.", labels=["loop", "doc_type"]
        )
        for t, n in sorted(counts.items()):
            fam.add_metric([*loop, t], n)
        out.append(fam)
    cer = GaugeMetricFamily("deepsynth_loop_champion_holdout_cer",
                            "The champion's CER (0-1) on the type's holdout, as registered.",
                            labels=["loop", "doc_type", "model"])  # fmt: skip
    version = GaugeMetricFamily("deepsynth_loop_champion_version", "The champion version serving the type.",
                                labels=["loop", "doc_type", "model"])  # fmt: skip
    for r in rows:
        if r["champion"] is not None:
            version.add_metric([*loop, r["doc_type"], r["model"]], float(r["champion"]))
            if r["champion_holdout_cer"] is not None:
                cer.add_metric([*loop, r["doc_type"], r["model"]], float(r["champion_holdout_cer"]))
    out += [cer, version]
    state = load_state(cfg.workdir)
    out.append(_one("pending_runs", "Runs started and not finished (resumed next pass).", loop,
                    float(state.pending is not None)))  # fmt: skip
    entries = GaugeMetricFamily("deepsynth_loop_inbox_entries", "Inbox entries read, by status (ok, bad).",
                                labels=["loop", "status"])  # fmt: skip
    for st in ("ok", "bad"):
        entries.add_metric([*loop, st], float(sum(e.get("status") == st for e in state.entries.values())))
    out.append(entries)
    if state.last_pass_at is not None:
        doc = "When the last pass completed (a failed pass leaves it)."
        out.append(_one("last_pass_timestamp_seconds", doc, loop, state.last_pass_at))
    if pass_seconds is not None:
        out.append(_one("last_pass_duration_seconds", "Wall time of the last pass.", loop, pass_seconds))
    return out


def _one(name: str, doc: str, loop: list[str], value: float) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(f"deepsynth_loop_{name}", doc, labels=["loop"])
    fam.add_metric(loop, value)
    return fam


class LoopMetrics:
    """The loop's metrics on a private registry, recomputed by :meth:`update` and published (textfile, optional
    ``/metrics`` endpoint, optional Pushgateway)."""

    def __init__(
        self,
        cfg: LoopConfig,
        *,
        textfile: str | Path | None = None,
        port: int | None = None,
        addr: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self._families: list[Metric] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.publisher = MetricsPublisher(
            self.registry, textfile if textfile is not None else Path(cfg.workdir) / TEXTFILE, port=port,
            addr=addr, pushgateway=envs.read("DEEPSYNTH_PUSHGATEWAY_URL", env), job="deepsynth-loop",
            grouping_key={"loop": cfg.name},
        )  # fmt: skip

    @property
    def port(self) -> int | None:
        return self.publisher.port

    def update(self, pass_seconds: float) -> None:
        """Recompute from the loop's files after a pass that took ``pass_seconds``, and publish."""
        self._families = loop_families(self.cfg, pass_seconds=pass_seconds)
        self.publisher.publish()

    def collect(self) -> Iterator[Metric]:
        yield from self._families

    def describe(self) -> list[Any]:
        return []

    def close(self) -> None:
        self.publisher.close()
