"""The `deepsynth` command: every job group is there, and --help imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["torch", "transformers", "peft", "onnxruntime", "cv2", "fastapi", "gradio", "mlflow", "pyarrow"]


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from deepsynth.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
        "print(r.output)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, _, help_text = out.partition("\n")
    assert loaded == "", f"--help imported heavy modules: {loaded}"
    for group in ("data", "train", "eval", "ocr", "serve", "demo"):
        assert group in help_text, f"subcommand {group!r} missing from --help"
