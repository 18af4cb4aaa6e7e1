"""The ``deepsynth`` command. Subcommands are grouped by job; each group lives in its own module.

Convention: CLI modules import only typer and the standard library at module level and import library code
inside the command functions, so ``deepsynth --help`` stays instant.
"""

from __future__ import annotations

import typer

from deepsynth.cli import bench, data, demo, doctor, evaluate, loop, ocr, samples, serve, train, tune
from deepsynth.cli.console import plain_help

app = typer.Typer(
    name="deepsynth",
    help="Fine-tune, evaluate and serve OCR models on your own documents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (data, train, evaluate, ocr, serve, samples, demo, doctor, bench, loop, tune):
    module.register(app)


def _print_version(value: bool) -> None:
    if value:
        from deepsynth import __version__

        typer.echo(f"deepsynth {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Fine-tune, evaluate and serve OCR models on your own documents."""


@app.command()
def version() -> None:
    """Print the DeepSynth version."""
    from deepsynth import __version__

    typer.echo(__version__)


plain_help(app)


if __name__ == "__main__":
    app()
