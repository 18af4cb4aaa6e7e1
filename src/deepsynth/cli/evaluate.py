"""`deepsynth eval`: run an engine over datasets (predictions.jsonl, metrics.json, report.html),
`eval compare RUN_A RUN_B` (paired deltas with bootstrap confidence intervals), `eval leaderboard RUN...`
(engines ranked per dataset and group) and `eval drift BASELINE NEW` (non-zero exit when a group worsens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from deepsynth.cli.console import ProgressOpt, show_progress
from deepsynth.cli.data import DocTypeOpt
from deepsynth.cli.ray_options import CpusOpt, GpusOpt, RayOpt, ShardOpt, WindowOpt, WorkersOpt
from deepsynth.scale.runtime import WINDOW

eval_app = typer.Typer(
    help="Evaluate an OCR engine on datasets (CER/WER, breakdowns, HTML report) and compare runs.",
    invoke_without_command=True,
    no_args_is_help=True,
)


def _fail(exc: Exception | str) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _parse_opts(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--engine-opt expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load_engine(spec: str | None, opts: dict[str, Any]) -> Any:
    """``load_engine``; an engine that does not take an --engine-opt is a one-line error, not a traceback."""
    from deepsynth.models.registry import load_engine

    try:
        return load_engine(spec, **opts)
    except TypeError as exc:
        if not opts or "argument" not in str(exc):
            raise
        raise ValueError(
            f"--engine-opt {', '.join(opts)}: engine {spec!r} does not accept it ({exc})"
        ) from exc


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


@eval_app.callback()
def evaluate(
    ctx: typer.Context,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            "-e",
            help="Engine spec: rapidocr, tesseract, rapidocr:page, ppocr:runs/x/best, server:http://... "
            "[required]",
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Dataset source (repeatable): `name=path[:image_root]` or a path; a manifest's images may "
            "be absolute paths or relative to image_root (default: the manifest's folder). [required]",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (rerun to resume). [required]")
    ] = None,
    normalize: Annotated[
        str,
        typer.Option(
            "--normalize",
            "-n",
            help="Normalisation profile: none, nfc, "
            "ocr_standard, jiwer, omnidocbench, olmocr, paddleocr, or "
            "steps joined by '+' (nfkc+casefold+collapse).",
        ),
    ] = "none",
    level: Annotated[str, typer.Option(help="Rows to evaluate: line, page or all.")] = "line",
    split: Annotated[str | None, typer.Option(help="Only this split: train, val or test.")] = None,
    split_key: Annotated[
        str, typer.Option(help="Grouping key of the split hash (page_id, subset, ...).")
    ] = "page_id",
    seed: Annotated[int, typer.Option(help="Seed of the split hash and of --sample.")] = 0,
    lang: Annotated[
        list[str] | None, typer.Option("--lang", help="Only these languages (repeatable).")
    ] = None,
    subset: Annotated[
        list[str] | None, typer.Option("--subset", help="Only these subsets (repeatable).")
    ] = None,
    doc_type: DocTypeOpt = None,
    limit: Annotated[
        int | None, typer.Option(help="At most this many samples from each --data source (the first ones).")
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            min=1,
            help="This many samples from each --data source, drawn at random with --seed and spread over its "
            "subsets in proportion to their sizes (at least one each).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per engine call.")] = 8,
    include_flagged: Annotated[
        bool,
        typer.Option(
            "--include-flagged", help="Also score rows flagged has_untranscribed (excluded by default)."
        ),
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for confidence intervals (0: none).")
    ] = 1000,
    engine_opt: Annotated[
        list[str] | None,
        typer.Option(
            "--engine-opt", help="key=value passed to the engine factory (repeatable), e.g. threads=1."
        ),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generative engines: output limit.")] = None,
    progress: ProgressOpt = None,
    ray: RayOpt = None,
    workers: WorkersOpt = 1,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
    shard_size: ShardOpt = 64,
    window: WindowOpt = WINDOW,
) -> None:
    """Evaluate ENGINE on --data sources into --out: predictions.jsonl, metrics.json, report.html."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [name for name, v in (("--engine", engine), ("--data", data), ("--out", out)) if not v]
    if missing:
        _fail(f"missing {', '.join(missing)} (see `deepsynth eval --help`)")
    if level not in ("line", "page", "all"):
        _fail(f"--level must be line, page or all, got {level!r}")
    if sample and limit:
        _fail("--sample and --limit exclude each other (--sample draws at random, --limit takes the first)")
    progress = show_progress(progress)
    import itertools

    from deepsynth.data import DataReport, SampleFilter, open_user_sources
    from deepsynth.data.sampling import stratified_sample
    from deepsynth.evaluation.harness import RunDirError, evaluate_engine
    from deepsynth.evaluation.normalize import get_normalizer
    from deepsynth.models.generation import GenerationConfig

    try:
        get_normalizer(normalize)
        report = DataReport()
        streams = []
        for spec in data or []:
            flt = SampleFilter(languages=lang or None, subsets=subset or None, doc_types=doc_type or None,
                               levels=None if level == "all" else [level], split=split, split_key=split_key,
                               seed=seed, limit=limit)  # fmt: skip
            stream = open_user_sources([spec], filter=flt, report=report)
            streams.append(stratified_sample(stream, sample, seed) if sample else stream)
        opts = _parse_opts(engine_opt)
        eng = None if ray else _load_engine(engine, opts)
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
    generation = GenerationConfig(max_new_tokens=max_new_tokens) if max_new_tokens else None
    samples = itertools.chain.from_iterable(streams)
    exclude = () if include_flagged else ("has_untranscribed",)
    if ray:
        from deepsynth.cli.ray_options import fail_job, print_stats, ray_options

        pool = ray_options(ray, workers, cpus_per_worker, gpus_per_worker, shard_size, batch_size, window)
        from deepsynth.scale.evaluate import evaluate_on_ray
        from deepsynth.scale.shards import ShardStoreError

        job = {"data": list(data or []), "level": level, "split": split, "split_key": split_key, "seed": seed,
               "lang": lang, "subset": subset, "doc_type": doc_type, "limit": limit, "sample": sample,
               "exclude": list(exclude)}  # fmt: skip
        try:
            result, stats = evaluate_on_ray(
                engine, samples, out, opts=pool, job=job, engine_opts=opts, normalize=normalize,
                generation=generation, exclude_flags=exclude, dataset=list(data or []), bootstrap=bootstrap,
                progress=progress,
            )  # fmt: skip
        except (RunDirError, ShardStoreError) as exc:
            _fail(exc)
        except Exception as exc:  # noqa: BLE001 - a Ray failure: its root cause, not Ray's traceback
            fail_job(exc)
        print_stats(stats)
    else:
        mode = getattr(eng, "mode", None)
        if mode in ("line", "page") and level in ("line", "page") and mode != level:
            typer.secho(f"warning: engine reads {mode}s but --level {level} selects {level} rows "
                        f"(use e.g. `-e {engine.partition(':')[0]}:{level}`)", fg=typer.colors.YELLOW, err=True)  # fmt: skip
        total = (sample or limit) * len(data) if (sample or limit) else None
        try:
            result = evaluate_engine(
                eng, samples, out, normalize=normalize, batch_size=batch_size, generation=generation,
                progress=progress, dataset=list(data or []), total=total, exclude_flags=exclude,
                bootstrap=bootstrap,
            )  # fmt: skip
        except RunDirError as exc:
            _fail(exc)
    if report.n_skipped:
        report.print_summary()
    if not result["n"]:
        _fail(f"no samples were scored: {report.n_skipped} skipped (listed above), the others did not match "
              "the filters (--lang, --subset, --level, --split) or are flagged (--include-flagged)")  # fmt: skip
    _print_summary(result, out)


def _print_summary(result: dict[str, Any], out: Path | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{result['engine']} · normalize={result['normalize']} · n={result['n']}"))
    for col in ("", "CER", "WER", "NED", "exact", "repetition", "truncation"):
        table.add_column(col, justify="right" if col else "left")

    def row(name: str, g: dict[str, Any]) -> None:
        table.add_row(name, _pct(g.get("cer")), _pct(g.get("wer")), _pct(g.get("ned")),
                      _pct(g.get("exact_match")), _pct(g.get("repetition_rate")), _pct(g.get("truncation_rate")))  # fmt: skip

    row("all", result)
    for name, g in sorted((result.get("per_subset") or {}).items()):
        row(escape(f"  {name}"), g)
    console = Console()
    console.print(table)
    cis = [(name, result.get(f"{key}_ci")) for key, name in
           (("cer", "CER"), ("wer", "WER"), ("ned", "NED"), ("exact_match", "exact"))]  # fmt: skip
    if any(ci for _, ci in cis):
        console.print(
            "95% CI: " + "; ".join(f"{name} {_pct(ci[0])} – {_pct(ci[1])}" for name, ci in cis if ci)
        )
    bad = len(result.get("unreadable") or []) + len(result.get("engine_errors") or [])
    excluded = sum((result.get("excluded") or {}).get("counts", {}).values())
    console.print(f"not scored: {bad} failed (see metrics.json), {excluded} excluded by flag; "
                  f"resumed {result['resumed']}, new {result['new']}")  # fmt: skip
    console.print(escape(f"wrote {out}/predictions.jsonl, metrics.json, report.html"))


NormalizeOpt = Annotated[
    str | None, typer.Option("--normalize", "-n", help="Profile (default: the (first) run's own).")
]
ResamplesOpt = Annotated[int, typer.Option(help="Bootstrap resamples.")]


@eval_app.command("compare")
def compare(
    run_a: Annotated[Path, typer.Argument(help="Baseline run directory (A).")],
    run_b: Annotated[Path, typer.Argument(help="Candidate run directory (B).")],
    normalize: NormalizeOpt = None,
    resamples: ResamplesOpt = 1000,
    json_out: Annotated[
        str | None,
        typer.Option("--json", help="Write the comparison JSON here ('-': stdout only, no table)."),
    ] = None,
) -> None:
    """Paired comparison of two runs on their common samples: B - A with 95% bootstrap CIs."""
    from deepsynth.evaluation.harness import RunDirError, compare_runs

    try:
        result = compare_runs(run_a, run_b, normalize=normalize, n_resamples=resamples)
    except (RunDirError, ValueError) as exc:
        _fail(exc)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if json_out == "-":
        typer.echo(text)
        return
    if json_out:
        Path(json_out).write_text(text + "\n", encoding="utf-8")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"B - A on {result['n_common']} common samples · normalize={result['normalize']}")
    for col in ("metric", "A", "B", "Δ (B-A)", "95% CI", "p"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, m in result["metrics"].items():
        delta = m.get("delta")
        ci = f"[{_pct(m['ci_low'])}, {_pct(m['ci_high'])}]" if "ci_low" in m else ""
        p = ("<0.001" if m["p_value"] < 0.001 else f"{m['p_value']:.3f}") if "p_value" in m else ""
        sign = "" if delta is None or delta < 0 else "+"
        table.add_row(
            name, _pct(m["a"]), _pct(m["b"]), "–" if delta is None else sign + _pct(delta), escape(ci), p
        )
    console = Console()
    console.print(escape(f"A = {result['engine_a']} ({run_a})\nB = {result['engine_b']} ({run_b})"))
    console.print(table)
    if result["only_a"] or result["only_b"]:
        console.print(f"not compared: {result['only_a']} samples only in A, {result['only_b']} only in B")


GroupOpt = Annotated[
    list[str] | None,
    typer.Option("--by", help="Group key (repeatable): dataset, subset, doc_type, language or level."),
]
MetricOpt = Annotated[
    str,
    typer.Option(help="Rate to rank/check: cer, wer, ned, exact_match, repetition_rate, truncation_rate."),
]


@eval_app.command("leaderboard")
def leaderboard(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories of `deepsynth eval`.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Writes summary.json, leaderboard.md, leaderboard.html here.")
    ],
    by: GroupOpt = None,
    metric: MetricOpt = "cer",
    normalize: NormalizeOpt = None,
    resamples: ResamplesOpt = 1000,
    markdown: Annotated[
        Path | None,
        typer.Option("--markdown", help="Also write the Markdown here (e.g. docs/leaderboard.md)."),
    ] = None,
) -> None:
    """Rank engines per dataset and per subset (or --by key) with 95% CIs; ≈ marks neighbours that are not
    significantly different (paired bootstrap on shared samples)."""
    from deepsynth.evaluation.harness import RunDirError
    from deepsynth.evaluation.leaderboard import build_leaderboard, write_leaderboard

    try:
        board = build_leaderboard(
            runs, by=by or ["subset"], metric=metric, normalize=normalize, n_resamples=resamples
        )
    except (RunDirError, ValueError) as exc:
        _fail(exc)
    files = write_leaderboard(board, out)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        files.append(markdown)
        markdown.write_text((out / "leaderboard.md").read_text(encoding="utf-8"), encoding="utf-8")
    for section in board["datasets"]:
        typer.echo(f"{section['dataset']}: " + " / ".join(
            f"{r['rank']}{'≈' if r.get('tied_with_above') else ''} {r['engine']} {_pct(r[metric])}"
            for r in section["rows"]
        ))  # fmt: skip
    typer.echo("wrote " + ", ".join(str(f) for f in files))


@eval_app.command("drift")
def drift(
    baseline: Annotated[Path, typer.Argument(help="Baseline run directory.")],
    new: Annotated[Path, typer.Argument(help="New run directory (same dataset).")],
    max_increase: Annotated[
        float, typer.Option(help="Fail when a group worsens by more than this many percentage points.")
    ] = 0.5,
    by: GroupOpt = None,
    metric: MetricOpt = "cer",
    normalize: NormalizeOpt = None,
    resamples: ResamplesOpt = 1000,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """Exit 1 when NEW is worse than BASELINE by more than --max-increase points, overall or in any group
    (paired bootstrap: the 95% CI of the change must exclude 0); exit 2 on bad input."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from deepsynth.evaluation.drift import check_drift
    from deepsynth.evaluation.harness import RunDirError

    try:
        result = check_drift(
            baseline, new, max_increase=max_increase, by=by or None,
            metric=metric, normalize=normalize, n_resamples=resamples,
        )  # fmt: skip
    except (RunDirError, ValueError) as exc:
        _fail(exc)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = Table(title=escape(f"{metric} drift: new - baseline on {result['n_shared']} shared samples, "
                               f"threshold +{max_increase} pp"))  # fmt: skip
    for col in ("group", "n", "baseline", "new", "Δ", "95% CI", "p", ""):
        table.add_column(col, justify="left" if col == "group" else "right")
    for g in result["groups"]:
        name = "all" if g["value"] is None else f"{g['group']}={g['value']}"
        table.add_row(escape(name), str(g["n"]), _pct(g["baseline"]), _pct(g["new"]), f"{100 * g['delta']:+.2f} pp",
                      f"[{100 * g['ci_low']:+.2f}, {100 * g['ci_high']:+.2f}]", f"{g['p_value']:.3f}",
                      "[red]FAIL[/red]" if g["failed"] else "ok")  # fmt: skip
    console = Console()
    console.print(table)
    if result["failed"]:
        names = ", ".join(
            "all" if g["value"] is None else f"{g['group']}={g['value']}" for g in result["failed"]
        )
        console.print(
            escape(f"drift: {len(result['failed'])} group(s) worse by more than {max_increase} pp: {names}")
        )
        raise typer.Exit(1)
    console.print(f"no group worse by more than {max_increase} pp (significant at 95%)")


@eval_app.command("quality-baseline")
def quality_baseline(
    run: Annotated[Path, typer.Argument(help="The evaluation run that promoted the model.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="The model id the server reports (its `model` label).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Rules file to write, e.g. deploy/baselines/NAME.yml.")
    ],
    doc_type_key: Annotated[
        str | None,
        typer.Option(help="Sample field whose values are the doc types (default: one doc type, `unknown`)."),
    ] = None,
) -> None:
    """Write the run's label-free quality signals (mean confidence, empty, repetition and truncation rates)
    as Prometheus recording rules, the reference of the quality alerts in deploy/alerts.yml."""
    from deepsynth.evaluation.harness import RunDirError
    from deepsynth.evaluation.quality_baseline import baseline_rules
    from deepsynth.evaluation.quality_baseline import quality_baseline as compute

    try:
        baseline = compute(run, doc_type_key=doc_type_key)
    except (RunDirError, ValueError) as exc:
        _fail(exc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(baseline_rules(baseline, model, str(run)), encoding="utf-8")
    for doc_type, values in baseline.items():
        typer.echo(f"{doc_type}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `deepsynth eval` (and `eval compare`) to the main app."""
    app.add_typer(eval_app, name="eval")
