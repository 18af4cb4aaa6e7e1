"""How the ``deepsynth`` command talks to people: help readable at 80 columns, progress bars only on a
terminal, one-line errors for a busy port.

Help uses click's plain formatter (it wraps long names instead of cutting them, marks required options and
shows no metavar on flags), with options grouped under their ``rich_help_panel`` heading (Ray, Limits).
"""

from __future__ import annotations

import socket
import sys
from collections import defaultdict
from typing import Annotated

import click
import typer
from typer.core import TyperCommand, TyperGroup

# the model every command reads with when given none: the embedded PP-OCR recogniser with line detection
DEFAULT_ENGINE = "rapidocr:page"

ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress bars (default: only when stderr is a terminal).",
        show_default=False,
    ),
]


def show_progress(flag: bool | None) -> bool:
    """``--progress/--no-progress`` when given, else whether stderr is a terminal (logs get no bars)."""
    return sys.stderr.isatty() if flag is None else flag


def _format_options(cmd: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    sections: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            sections["Arguments"].append(record)
        else:
            sections[getattr(param, "rich_help_panel", None) or "Options"].append(record)
    for title in sorted(sections, key=lambda t: (t != "Arguments", t != "Options")):
        with formatter.section(title):
            formatter.write_dl(sections[title])


class PlainCommand(TyperCommand):
    """A command whose help is click's plain text, options grouped by panel."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)


class PlainGroup(TyperGroup):
    """A command group whose help is click's plain text, options grouped by panel, then the commands."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its whole first sentence, wrapped (click cuts it to the line with '...')."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def plain_help(app: typer.Typer) -> None:
    """Give ``app``, its command groups and all their commands plain help (call on the root app, after every
    command is registered); ``-h`` works like ``--help`` everywhere (click passes it down to subcommands)."""
    app.rich_markup_mode = None
    app.info.cls = PlainGroup
    app.info.context_settings = {"help_option_names": ["-h", "--help"]}
    _plain_commands(app)


def _plain_commands(app: typer.Typer) -> None:
    app.rich_markup_mode = None
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = PlainCommand
    for group in app.registered_groups:
        group.cls = PlainGroup
        _plain_commands(group.typer_instance)


def ensure_port_free(host: str, port: int) -> None:
    """Exit with a one-line error when ``host:port`` cannot be bound (before a model is loaded for nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "already in use" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
            typer.secho(
                f"error: cannot listen on {host}:{port}: {reason} (stop the other server or pick --port)",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(2) from exc
