"""The docs stay true: every `deepsynth` command line in docs/*.md names a real (sub)command and only options
that command has, every `make` target exists, and every DEEPSYNTH_* variable the docs mention is read by code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsynth.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
GROUPS = {
    "bench": {"compression", "learning-curve"},
    "data": {"prepare", "stats", "synth"},
    "eval": {"compare", "leaderboard", "drift", "quality-baseline"},
}


def _shell_lines(path: Path) -> list[str]:
    """Command lines in ```bash blocks (continuations joined, comments dropped)."""
    out, in_block = [], False
    for raw in path.read_text().splitlines():
        if raw.startswith("```"):
            in_block = raw.strip() == "```bash"
            continue
        if in_block and raw.strip() and not raw.lstrip().startswith("#"):
            out.append(raw.strip())
    return out


def _deepsynth_commands() -> list[tuple[str, list[str]]]:
    cmds = []
    for doc in DOCS:
        for line in _shell_lines(doc):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            while tokens and re.match(r"^[A-Z_]+=", tokens[0]):  # leading VAR=value assignments
                tokens.pop(0)
            if tokens and tokens[0] == "deepsynth":
                cmds.append((f"{doc.name}: {line}", tokens[1:]))
    return cmds


COMMANDS = _deepsynth_commands()


def test_docs_exist_and_have_commands():
    assert {p.name for p in DOCS} >= {"pipeline.md", "observability.md", "privacy.md", "troubleshooting.md"}
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[w[:90] for w, _ in COMMANDS])
def test_documented_command_exists_with_its_options(where, args):
    path = args[:1]
    if args[0] in GROUPS and len(args) > 1 and args[1] in GROUPS[args[0]]:
        path = args[:2]
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert res.exit_code == 0, f"{where}: `deepsynth {' '.join(path)}` does not exist\n{res.output}"
    for opt in (a.split("=")[0] for a in args if a.startswith("--")):
        if opt != "--help":
            assert opt in res.output, f"{where}: `deepsynth {' '.join(path)}` has no option {opt}"


def test_documented_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    for doc in DOCS:
        for line in _shell_lines(doc):
            if line.startswith("make "):
                assert line.split()[1] in targets, f"{doc.name}: {line}"


def test_documented_environment_variables_are_read_by_code():
    code = "\n".join(p.read_text() for d in ("src", "tests", "bench") for p in (ROOT / d).rglob("*.py"))
    code += (ROOT / "deploy" / "entrypoint.sh").read_text() + (
        ROOT / "deploy" / "docker-compose.yml"
    ).read_text()
    for doc in DOCS:
        for var in set(re.findall(r"\bDEEPSYNTH_[A-Z_]+\b", doc.read_text())):
            if var.endswith("_"):  # a prefix like DEEPSYNTH_SAMPLES_*
                continue
            assert var in code, f"{doc.name} documents {var}, which no code reads"
