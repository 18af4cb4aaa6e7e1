"""``deepsynth doctor``: the packages and system tools DeepSynth uses here, one line each, with what is missing."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from typing import Any

from deepsynth.training.run_info import package_versions

PACKAGES = (
    "deepsynth", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "rapidocr", "onnxruntime",
    "tesserocr", "fastapi", "ray", "unsloth", "flash-attn",
)  # fmt: skip
# tool -> (candidate executables, version arguments, what needs it)
TOOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "tesseract": (("tesseract",), ("--version",), "the tesseract baseline"),
    "promtool": (("promtool",), ("--version",), "the alert-rule test"),
    "chromium": (("chromium", "chromium-browser", "google-chrome"), ("--version",), "the web-demo test"),
    "nvidia-smi": (("nvidia-smi",), ("--query-gpu=name,driver_version", "--format=csv,noheader"), "GPUs"),
}


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"fails: {exc}"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"exit status {out.returncode}"


def tools() -> dict[str, dict[str, Any]]:
    """Path and version line of each system tool (path None when absent)."""
    found: dict[str, dict[str, Any]] = {}
    for name, (candidates, args, needed_by) in TOOLS.items():
        path = next((p for c in candidates if (p := shutil.which(c))), None)
        version = _first_line([path, *args]) if path else None
        found[name] = {"path": path, "version": version, "needed_by": needed_by}
    return found


def torch_device() -> str:
    """``CUDA 12.8, 1 device(s): NVIDIA L4`` / ``CPU only (torch built without CUDA)`` / why CUDA is not usable."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if not torch.version.cuda:
        return "CPU only (torch built without CUDA)"
    if not torch.cuda.is_available():
        return f"torch built for CUDA {torch.version.cuda}, but no CUDA device is visible"
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): {names}"


def report() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "packages": {k: v for k, v in package_versions(PACKAGES).items() if k != "python"},
        "device": torch_device(),
        "tools": tools(),
    }


def lines(rep: dict[str, Any]) -> list[str]:
    """The short text form of :func:`report`."""
    out = [f"python {rep['python']} on {rep['platform']}; device: {rep['device']}"]
    for name, version in rep["packages"].items():
        out.append(f"  {name:<13} {version or 'not installed'}")
    for name, tool in rep["tools"].items():
        state = tool["version"] if tool["path"] else f"missing (needed for {tool['needed_by']})"
        out.append(f"  {name:<13} {state}")
    return out
