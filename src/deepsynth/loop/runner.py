"""One pass of the loop (``run_once``): scan the inbox → per-type accounting → decide → train → gate →
register → promote. Each run is a record in ``WORKDIR/runs/RUN_ID/record.json`` whose ``stage`` advances
started → trained → gated → registered → done, saved after every step: a killed pass resumes the run where it
stopped (training from its last checkpoint), and the champion alias only moves in the last step.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.data import DataReport, Sample, SampleFilter, open_sources
from deepsynth.loop import gate as gates
from deepsynth.loop import trigger as triggers
from deepsynth.loop.config import LoopConfig, safe_name
from deepsynth.loop.inbox import InboxScan, good_sources, scan
from deepsynth.loop.registry import CHAMPION, RUN_TAG, ModelRegistry
from deepsynth.loop.state import LoopState, doc_type, load_state, save_state, write_json_atomic
from deepsynth.observability.tracing import Tracing

RECORD = "record.json"
STAGES = ("started", "trained", "gated", "registered", "done")


@dataclass
class PassReport:
    """What one pass did: the inbox scan, the trigger decisions and the records of the runs it finished."""

    scan: InboxScan
    decisions: list[triggers.Decision]
    runs: list[dict[str, Any]] = field(default_factory=list)


def holdout_metric(doc_type: str) -> str:
    """The registered version's metric holding its CER on ``doc_type``'s holdout."""
    return f"holdout_cer.{safe_name(doc_type)}"


def registry_for(cfg: LoopConfig) -> ModelRegistry:
    return ModelRegistry(cfg.registry_uri, Path(cfg.workdir) / "mlartifacts")


def run_dir(cfg: LoopConfig, run_id: str) -> Path:
    return Path(cfg.workdir) / "runs" / run_id


def load_record(cfg: LoopConfig, run_id: str) -> dict[str, Any]:
    return json.loads((run_dir(cfg, run_id) / RECORD).read_text(encoding="utf-8"))


def _save(cfg: LoopConfig, record: dict[str, Any]) -> None:
    write_json_atomic(run_dir(cfg, record["run_id"]) / RECORD, record)


def run_once(
    cfg: LoopConfig,
    *,
    now: float | None = None,
    log: Callable[[str], None] = print,
    tracing: Tracing | None = None,
) -> PassReport:
    """One pass; safe to repeat (cron): a run left unfinished by a killed pass is finished first.

    Spans (``tracing``, else the one the ``OTEL_*`` environment asks for): ``loop.pass`` with children
    ``loop.scan``, ``loop.decide`` and per run ``loop.run`` > ``loop.train``, ``loop.gate``, ``loop.register``,
    ``loop.promote`` (the stages this pass executes)."""
    tr = Tracing.from_env() if tracing is None else tracing
    try:
        with tr.span("loop.pass", {"deepsynth.loop": cfg.name, "deepsynth.loop.mode": cfg.trigger.mode}):
            return _pass(cfg, now, log, tr)
    finally:
        if tracing is None:
            tr.shutdown()


def _pass(cfg: LoopConfig, now: float | None, log: Callable[[str], None], tr: Tracing) -> PassReport:
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = load_state(workdir)
    finished = []
    if state.pending is not None:
        log(f"resuming run {state.pending}")
        record = load_record(cfg, state.pending)
        finished.append(_execute(cfg, state, registry_for(cfg), record, log, tr, resumed=True))
    h = cfg.holdout
    with tr.span("loop.scan", {"deepsynth.loop.inbox": str(cfg.inbox)}) as span:
        found = scan(cfg.inbox, state, h.key, h.fraction, h.seed)
        save_state(workdir, state)
        _attrs(span, entries_read=len(found.read), entries_bad=len(found.bad),
               new_samples=sum(n for c in found.read.values() for n in c.values()))  # fmt: skip
    for name, counts in found.read.items():
        log(f"inbox: {name}: " + ", ".join(f"{t} +{n}" for t, n in sorted(counts.items())))
    for name, reason in found.bad.items():
        log(f"inbox: {name}: skipped ({reason})")
    now = time.time() if now is None else now
    with tr.span("loop.decide") as span:
        decisions = triggers.decide(state, cfg.trigger, now)
        firing = [d.doc_type for d in decisions if d.fire]
        _attrs(span, doc_types=[d.doc_type for d in decisions], firing=firing)
    groups = [firing] if cfg.trigger.mode == "shared" and firing else [[t] for t in firing]
    for types in groups:
        record = _start(cfg, state, types, now)
        log(f"run {record['run_id']}: {', '.join(types)} ({cfg.trigger.mode})")
        finished.append(_execute(cfg, state, registry_for(cfg), record, log, tr))
    state.last_pass_at = time.time()
    save_state(workdir, state)
    return PassReport(found, decisions, finished)


def _attrs(span: Any, **attrs: Any) -> None:
    """Set ``deepsynth.loop.KEY`` attributes on ``span`` (None when tracing is off)."""
    if span is not None:
        span.set_attributes({f"deepsynth.loop.{k}": v for k, v in attrs.items()})


def _start(cfg: LoopConfig, state: LoopState, types: list[str], now: float) -> dict[str, Any]:
    base = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{'+'.join(types)}"[:60]
    run_id, n = base, 1
    while run_dir(cfg, run_id).exists():  # two passes within one second never share a record
        n += 1
        run_id = f"{base}-{n}"
    trained_on = sorted(state.types) if cfg.trigger.mode == "shared" else types
    record = {
        "run_id": run_id, "created": now, "mode": cfg.trigger.mode, "types": types, "trained_on": trained_on,
        "model_name": cfg.model_name(None if cfg.trigger.mode == "shared" else types[0]),
        "labelled_at_start": {t: state.types[t].labelled for t in trained_on},
        "documents_at_start": {t: state.types[t].n_documents for t in trained_on}, "stage": "started",
    }  # fmt: skip
    _save(cfg, record)
    state.pending = run_id
    save_state(cfg.workdir, state)
    return record


def _execute(cfg: LoopConfig, state: LoopState, registry: ModelRegistry, record: dict[str, Any],
             log: Callable[[str], None], tr: Tracing, *, resumed: bool = False) -> dict[str, Any]:  # fmt: skip
    """Advance ``record`` through the remaining stages, saving it after each one (a span per stage)."""
    name = record["model_name"]
    run_attrs = {"deepsynth.loop.run_id": record["run_id"], "deepsynth.loop.model": name,
                 "deepsynth.loop.doc_types": record["types"], "deepsynth.loop.resumed": resumed}  # fmt: skip
    with tr.span("loop.run", run_attrs):
        if record["stage"] == "started":
            with tr.span("loop.train") as span:
                record["train"] = _train(cfg, state, registry, record)
                record["stage"] = "trained"
                _save(cfg, record)
                _attrs(span, steps=record["train"]["steps"], n_train=record["train"]["n_train"],
                       start=record["train"]["start"])  # fmt: skip
            log(f"trained: {record['train']['n_train']} samples, {record['train']['steps']} steps")
        if record["stage"] == "trained":
            with tr.span("loop.gate") as span:
                record["gate"] = _gate(cfg, state, registry, record)
                record["stage"] = "gated"
                _save(cfg, record)
                _attrs(span, promote=record["gate"]["promote"], champion=record["gate"]["champion"],
                       holdout_types=[r["doc_type"] for r in record["gate"]["results"]])  # fmt: skip
            for reason in record["gate"]["reasons"]:
                log(f"gate: {reason}")
        if record["stage"] == "gated":
            with tr.span("loop.register") as span:
                _register(cfg, registry, record)
                _attrs(span, version=record["version"])
        if record["stage"] == "registered":
            with tr.span("loop.promote") as span:
                if record["gate"]["promote"]:
                    registry.promote(name, record["version"])
                record["decision"] = "promoted" if record["gate"]["promote"] else "rejected"
                record["champion_after"] = registry.version_by_alias(name, CHAMPION)
                record["stage"] = "done"
                _save(cfg, record)
                _attrs(span, decision=record["decision"], champion=str(record["champion_after"]))
            log(f"{name} v{record['version']}: {record['decision']} (champion: v{record['champion_after']})")
    for t in record["trained_on"]:
        ts = state.type(t)
        ts.labelled_at_last_run = max(ts.labelled_at_last_run, record["labelled_at_start"][t])
        docs = record.get("documents_at_start", record["labelled_at_start"])[t]  # older records: samples
        ts.documents_at_last_run = max(ts.documents_at_last_run, docs)
        ts.last_run_id, ts.last_run_at = record["run_id"], record["created"]
    if record["run_id"] not in state.runs:
        state.runs.append(record["run_id"])
    state.pending = None
    save_state(cfg.workdir, state)
    return record


def _register(cfg: LoopConfig, registry: ModelRegistry, record: dict[str, Any]) -> None:
    """The candidate as a registry version with its holdout CERs, data fingerprints, config and gate; challenger."""
    name = record["model_name"]
    metrics = {holdout_metric(r["doc_type"]): r["cer_candidate"] for r in record["gate"]["results"]}
    version = registry.register(
        name, record["train"]["model_dir"], run_id=record["run_id"],
        metrics={**metrics, "train_steps": record["train"]["steps"], "train_samples": record["train"]["n_train"]},
        params={"types": ",".join(record["types"]), "mode": record["mode"], "start": record["train"]["start"]},
        files={"config.json": record["train"]["config"], "data.json": record["train"]["data"],
               "gate.json": record["gate"]},
    )  # fmt: skip
    registry.set_challenger(name, version)
    record.update(version=version, stage="registered")
    _save(cfg, record)


def labelled(
    cfg: LoopConfig, state: LoopState, types: list[str], *, holdout: bool
) -> dict[str, list[Sample]]:
    """Per type, the inbox samples on the holdout side (``holdout=True``) or the training side."""
    out: dict[str, list[Sample]] = {t: [] for t in types}
    specs = good_sources(cfg.inbox, state)
    if not specs:
        return out
    for s in open_sources(specs, report=DataReport()):
        t = doc_type(s)
        if t in out and state.types[t].samples.get(s.id) is holdout:
            out[t].append(s)
    return out


def _start_model(cfg: LoopConfig, registry: ModelRegistry, name: str, dst: Path) -> tuple[str, str | None]:
    """(description, model directory or None for the recipe's model) to start training / compare from."""
    version = registry.version_by_alias(name, CHAMPION)
    if version is None:
        return "base", None
    return f"{name} v{version}", str(registry.download(name, version, dst / f"v{version}"))


def _recipe(cfg: LoopConfig, *extra: str) -> Any:
    """The training recipe with the loop's ``overrides`` and ``extra`` key=value applied."""
    from deepsynth.config import load_config
    from deepsynth.training.config import TrainConfig

    return load_config(TrainConfig, cfg.recipe, [*cfg.overrides, *extra])


def _train(
    cfg: LoopConfig, state: LoopState, registry: ModelRegistry, record: dict[str, Any]
) -> dict[str, Any]:
    """Fine-tune with ``deepsynth.training.train`` (the function ``deepsynth train`` calls) on the training side
    of the types' data; the recipe's split of that side gives the validation samples. Holdout never enters."""
    from deepsynth.config import to_dict
    from deepsynth.training import checkpoint
    from deepsynth.training.data import fingerprint
    from deepsynth.training.trainer import train

    rdir = run_dir(cfg, record["run_id"])
    start, model_dir = _start_model(cfg, registry, record["model_name"], rdir / "start")
    out = rdir / "train"
    tcfg = _recipe(cfg, f"output_dir={out}", *([f"model.path={model_dir}"] if model_dir else []))
    tcfg.resume = bool(checkpoint.list_checkpoints(out / "checkpoints"))  # a killed run continues
    pool = [s for group in labelled(cfg, state, record["trained_on"], holdout=False).values() for s in group]
    d = tcfg.data
    val_filter = SampleFilter(
        split="val", split_key=d.split_key, split_ratios=d.split_ratios, seed=d.split_seed
    )
    val = [s for s in pool if val_filter.accepts(s)][: d.eval_limit]
    val_ids = {s.id for s in val}
    train_samples = [s for s in pool if s.id not in val_ids]
    result = train(tcfg, train_samples=train_samples, eval_samples=val)
    model = result.best_dir or result.final_dir
    if model is None:
        raise RuntimeError(f"training in {rdir / 'train'} saved no model (stopped: {result.stopped})")
    return {"start": start, "model_dir": model, "steps": result.steps, "n_train": len(train_samples),
            "n_val": len(val), "config": to_dict(tcfg),
            "data": {"train": fingerprint(train_samples), "val": fingerprint(val)}}  # fmt: skip


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _engine(cfg: LoopConfig, model_dir: str | None) -> Any:
    from deepsynth.models.registry import load_engine

    m = _recipe(cfg).model
    spec = model_dir or (f"{m.family}:{m.path}" if m.path else m.family)
    return load_engine(spec, **dict(m.options))


def _gate(
    cfg: LoopConfig, state: LoopState, registry: ModelRegistry, record: dict[str, Any]
) -> dict[str, Any]:
    """Candidate and champion (or the base model) on every type's holdout; the decision and its numbers."""
    rdir = run_dir(cfg, record["run_id"])
    holdouts = labelled(cfg, state, sorted(state.types), holdout=True)
    holdouts = {t: sorted(v, key=lambda s: s.id)[: cfg.holdout.max_eval] for t, v in holdouts.items() if v}
    champion, champion_dir = _start_model(cfg, registry, record["model_name"], rdir / "start")
    # the champion's predictions are kept per model and version: later gates only run the new holdout pages
    key = champion.split(" ")[-1] if champion_dir else "base-" + _short_hash(repr(_recipe(cfg).model))
    champion_runs = Path(cfg.workdir) / "holdout_predictions" / record["model_name"] / key
    champion_engine = _engine(cfg, champion_dir)
    if champion_dir and not champion_runs.exists():
        _reuse_gate_predictions(
            cfg, registry, record["model_name"], key[1:], champion_runs, champion_engine.name
        )
    gates.score_holdout(champion_engine, holdouts, champion_runs, cfg.gate)
    gates.score_holdout(
        _engine(cfg, record["train"]["model_dir"]), holdouts, rdir / "gate" / "candidate", cfg.gate
    )
    results = gates.compare(champion_runs, rdir / "gate" / "candidate", list(holdouts), cfg.gate)
    served = cfg.trigger.mode == "shared" or cfg.gate.guard == "all"
    promote, reasons = gates.decide(
        results, record["types"], list(holdouts) if served else record["types"], cfg.gate
    )
    return {
        "champion": champion,
        "results": [asdict(r) for r in results],
        "promote": promote,
        "reasons": reasons,
    }


def _reuse_gate_predictions(
    cfg: LoopConfig, registry: ModelRegistry, name: str, version: str, dst: Path, engine_name: str
) -> None:
    """A champion that a loop run registered was scored on the holdout by that run's gate (as the candidate):
    its predictions seed ``dst``, so only holdout pages added since then are recognised again."""
    from deepsynth.evaluation.harness import RUN_INFO

    run_id = registry.version_info(name, version)["tags"].get(RUN_TAG)
    src = run_dir(cfg, run_id) / "gate" / "candidate" if run_id else None
    if src is None or not src.is_dir():
        return
    for part in sorted(p for p in src.iterdir() if (p / RUN_INFO).is_file()):
        if json.loads((part / RUN_INFO).read_text(encoding="utf-8")).get("engine") == engine_name:
            shutil.copytree(part, dst / part.name)


def status(cfg: LoopConfig, *, now: float | None = None) -> list[dict[str, Any]]:
    """Per type: labelled samples and documents, new since the last run (both), holdout size (samples), champion
    version and its holdout CER, and whether the trigger would fire (and why not). Reads the state; the inbox is
    not scanned."""
    state = load_state(cfg.workdir)
    if not state.types:
        return []
    registry = registry_for(cfg)
    decisions = {
        d.doc_type: d for d in triggers.decide(state, cfg.trigger, time.time() if now is None else now)
    }
    rows = []
    for t, ts in sorted(state.types.items()):
        name = cfg.model_name(t)
        version = registry.version_by_alias(name, CHAMPION)
        cer = registry.version_info(name, version)["metrics"].get(holdout_metric(t)) if version else None
        rows.append({"doc_type": t, "labelled": ts.labelled, "new_since_last_run": ts.new_since_last_run,
                     "documents": ts.n_documents, "new_documents": ts.new_documents, "holdout": ts.holdout_size, "model": name, "champion": version, "champion_holdout_cer": cer,
                     "would_fire": decisions[t].fire, "reason": decisions[t].reason,
                     "pending_run": state.pending})  # fmt: skip
    return rows


def history(cfg: LoopConfig) -> list[dict[str, Any]]:
    """Every run record, oldest first (the unfinished one last, with its stage)."""
    state = load_state(cfg.workdir)
    ids = [*state.runs, *([state.pending] if state.pending and state.pending not in state.runs else [])]
    return [load_record(cfg, i) for i in ids]
