"""`deepsynth data` commands: prepare (convert + validate), stats, synth (synthetic lines/pages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deepsynth.cli.ray_options import RayOpt

# same as deepsynth.data.images.DEFAULT_MAX_PIXELS, kept literal so --help needs no PIL import
DEFAULT_MAX_PIXELS = 89_478_485

TO_HELP = (
    "Output format: parquet, webdataset, jsonl, folder (.gt.txt sidecars) or hf (datasets save_to_disk)."
)
data_app = typer.Typer(help="Prepare, inspect and synthesise OCR datasets.", no_args_is_help=True)

SourcesArg = Annotated[
    list[str],
    typer.Argument(
        help="Sources: `name=path[:image_root]` or a path. JSONL manifest, Parquet, WebDataset .tar, "
        "HF save_to_disk folder or a folder of images with .gt.txt sidecars (auto-detected).",
        show_default=False,
    ),
]
LangOpt = Annotated[list[str] | None, typer.Option("--lang", help="Keep only these languages (repeatable).")]
SubsetOpt = Annotated[
    list[str] | None, typer.Option("--subset", help="Keep only these subsets (repeatable).")
]
DocTypeOpt = Annotated[
    list[str] | None,
    typer.Option("--doc-type", help="Keep only these document types (manifest `doc_type`, else `subset`)."),
]
LevelOpt = Annotated[
    list[str] | None, typer.Option("--level", help="Keep only line / page rows (repeatable).")
]
FlagOpt = Annotated[
    list[str] | None, typer.Option("--exclude-flag", help="Drop rows where this boolean field is true.")
]
SplitOpt = Annotated[str | None, typer.Option(help="Keep one split: train, val or test.")]
SplitKeyOpt = Annotated[str, typer.Option(help="Grouping key for splits (page_id, subset, id, ...).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split hash.")]
LimitOpt = Annotated[int | None, typer.Option(help="Stop after this many good samples.")]
PixelsOpt = Annotated[int, typer.Option(help="Refuse images with more pixels (checked from the header).")]


def _filter(lang, subset, level, exclude_flag, split, split_key, seed, limit, doc_type=None):  # noqa: ANN001, ANN202
    from deepsynth.data import SampleFilter

    return SampleFilter(
        languages=lang or None,
        subsets=subset or None,
        doc_types=doc_type or None,
        levels=level or None,
        exclude_flags=exclude_flag or None,
        split=split,
        split_key=split_key,
        seed=seed,
        limit=limit,
    )


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@data_app.command()
def prepare(
    sources: SourcesArg,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    to: Annotated[str, typer.Option("--to", help=TO_HELP)] = "parquet",
    shard_size: Annotated[int, typer.Option(help="Samples per Parquet file / tar shard.")] = 1000,
    max_pixels: PixelsOpt = DEFAULT_MAX_PIXELS,
    overwrite: Annotated[
        bool, typer.Option(help="Replace earlier output of the same format in --out.")
    ] = False,
    lang: LangOpt = None,
    subset: SubsetOpt = None,
    doc_type: DocTypeOpt = None,
    level: LevelOpt = None,
    exclude_flag: FlagOpt = None,
    split: SplitOpt = None,
    split_key: SplitKeyOpt = "page_id",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    ray: RayOpt = None,
    cpus_per_task: Annotated[
        float, typer.Option(help="CPUs per image-checking task.", rich_help_panel="Ray")
    ] = 0.5,
    ray_shard_size: Annotated[
        int, typer.Option(min=1, help="Images per check shard (the unit of resume).", rich_help_panel="Ray")
    ] = 256,
) -> None:
    """Convert SOURCES to sharded Parquet/WebDataset, validating every image and text.

    Bad samples (corrupt or missing images, empty texts, duplicate ids, paths escaping the data root, images
    over --max-pixels, invalid JSON lines) are listed by id in OUT/report.json and skipped.
    """
    from deepsynth.data.prepare import prepare as run
    from deepsynth.data.spec import SourceError

    kwargs = {"to": to, "shard_size": shard_size, "max_pixels": max_pixels, "overwrite": overwrite}
    try:
        flt = _filter(lang, subset, level, exclude_flag, split, split_key, seed, limit, doc_type)
        if ray:
            from deepsynth.cli.ray_options import print_stats, ray_options
            from deepsynth.scale.prepare import prepare_on_ray

            opts = ray_options(ray, 1, 1.0, 0.0, ray_shard_size, 16)
            opts.decode_cpus = cpus_per_task
            report, info, stats = prepare_on_ray(sources, out, opts=opts, filter=flt, **kwargs)
            print_stats(stats)
        else:
            report, info = run(sources, out, filter=flt, **kwargs)
    except (SourceError, FileExistsError, ValueError) as exc:
        _fail(exc)
    report.print_summary()
    typer.echo(
        f"wrote {info['n_written']} samples in {len(info['files'])} {to} file(s) to {out}; "
        f"skipped {report.n_skipped}; report: {out / 'report.json'}"
    )


@data_app.command()
def stats(
    sources: SourcesArg,
    decode: Annotated[
        bool, typer.Option(help="Decode every image (finds corrupt ones; image sizes).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the stats as JSON here.")
    ] = None,
    max_pixels: PixelsOpt = DEFAULT_MAX_PIXELS,
    lang: LangOpt = None,
    subset: SubsetOpt = None,
    doc_type: DocTypeOpt = None,
    level: LevelOpt = None,
    exclude_flag: FlagOpt = None,
    split: SplitOpt = None,
    split_key: SplitKeyOpt = "page_id",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
) -> None:
    """Count samples per dataset / language / subset / document type / level and list bad ones."""
    from deepsynth.data.spec import SourceError
    from deepsynth.data.stats import compute_stats

    try:
        flt = _filter(lang, subset, level, exclude_flag, split, split_key, seed, limit, doc_type)
        report, extra = compute_stats(sources, filter=flt, decode=decode, max_pixels=max_pixels)
    except (SourceError, ValueError) as exc:
        _fail(exc)
    report.print_summary()
    for key, value in extra.items():
        typer.echo(f"{key}: {value}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({**extra, **report.to_dict()}, indent=2, ensure_ascii=False) + "\n")
        typer.echo(f"stats: {json_out}")


@data_app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    to: Annotated[str, typer.Option("--to", help=TO_HELP)] = "parquet",
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same images.")] = 0,
    text_file: Annotated[
        Path | None, typer.Option("--text-file", help="UTF-8 text, one line per sample (else built-in text).")
    ] = None,
    lang: Annotated[
        list[str] | None,
        typer.Option(
            "--lang",
            help="Built-in text languages (repeatable; en fr de es el ru pl cs). "
            "With --text-file: the language tag of its lines.",
        ),
    ] = None,
    level: Annotated[str, typer.Option(help="line or page.")] = "line",
    lines_per_page: Annotated[int, typer.Option(help="Lines per page with --level page.")] = 8,
    augment: Annotated[
        bool, typer.Option(help="Seeded blur/noise/rotation/perspective/binarise/JPEG.")
    ] = True,
    font: Annotated[
        Path | None, typer.Option(help="Preferred font file (replaced when it lacks a glyph of a text).")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Samples per Parquet file / tar shard.")] = 1000,
    overwrite: Annotated[
        bool, typer.Option(help="Replace earlier output of the same format in --out.")
    ] = False,
) -> None:
    """Render synthetic text lines or pages with installed Unicode fonts (never tofu: texts no font covers
    are listed and skipped)."""
    from tqdm import tqdm

    from deepsynth.data import DataReport
    from deepsynth.data.synth import synthetic_samples
    from deepsynth.data.writers import staged_writer

    texts = None
    if text_file is not None:
        if not text_file.is_file():
            _fail(FileNotFoundError(f"--text-file {text_file} does not exist"))
        texts = [t.strip() for t in text_file.read_text(encoding="utf-8").splitlines() if t.strip()]
    report = DataReport()
    try:
        stream = synthetic_samples(
            texts,
            n,
            seed,
            languages=None if texts is not None else lang,
            language=(lang[0] if lang else None) if texts is not None else None,
            level=level,
            lines_per_page=lines_per_page,
            augment=augment,
            font=font,
            report=report,
        )
        with staged_writer(to, out, shard_size=shard_size, overwrite=overwrite) as writer:
            for sample in tqdm(stream, total=n, desc=f"synth -> {to}", unit="sample"):
                writer.write(sample)
                report.count(sample)
                sample.release()
            report.write_json(
                writer.out_dir / "report.json", format=to, n_written=writer.n, seed=seed, level=level
            )
    except (ValueError, FileExistsError) as exc:
        _fail(exc)
    report.print_summary()
    typer.echo(f"wrote {writer.n} synthetic samples to {out} ({to}); skipped {report.n_skipped}")


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the main app."""
    app.add_typer(data_app, name="data")
