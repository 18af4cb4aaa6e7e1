"""Every ``DEEPSYNTH_*`` environment variable the package reads: one typed table, one parser per type.

Like vLLM's ``envs.py``: modules never touch ``os.environ`` for these names; they read ``envs.NAME`` (the
current process environment) or ``envs.read(NAME, env)`` (an explicit mapping, e.g. in tests). An unset or
empty variable gives its default; a value that does not parse raises a ValueError naming the variable.
``docs/environment.md`` is generated from this table (``python -m deepsynth.envs``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    """The one truthy parser: 1/true/yes/on and 0/false/no/off (any case); anything else is an error."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, got {raw!r}")


@dataclass(frozen=True)
class EnvVar:
    """One variable: how its text parses, its default when unset, what it does."""

    type: Callable[[str], Any]
    default: Any
    doc: str


ENVIRONMENT_VARIABLES: dict[str, EnvVar] = {
    # ---- logs, metrics, traces (deepsynth.observability)
    "DEEPSYNTH_LOG_FORMAT": EnvVar(str, "json", "Log line format: `json` or `text`."),
    "DEEPSYNTH_LOG_LEVEL": EnvVar(str, "INFO", "Log level (DEBUG, INFO, WARNING, ...)."),
    "DEEPSYNTH_METRICS": EnvVar(parse_bool, True, "Prometheus metrics of the server (`/metrics`)."),
    "DEEPSYNTH_TRACING": EnvVar(
        parse_bool, None, "OpenTelemetry tracing on/off; unset: on when an `OTEL_*` exporter is configured."
    ),
    "DEEPSYNTH_TRAIN_METRICS_PORT": EnvVar(
        int, None, "Serve training metrics on this port for Prometheus to scrape (unset: no endpoint)."
    ),
    "DEEPSYNTH_TRAIN_METRICS_ADDR": EnvVar(
        str, "127.0.0.1", "Address of the training metrics endpoint (`0.0.0.0` in a container)."
    ),
    "DEEPSYNTH_PUSHGATEWAY_URL": EnvVar(
        str, None, "Prometheus Pushgateway the training and loop metrics are pushed to (unset: no push)."
    ),
    # ---- sampled requests (deepsynth.observability.samples, docs/privacy.md)
    "DEEPSYNTH_SAMPLES_DIR": EnvVar(
        str, None, "Store sampled requests here; unset: nothing is ever written."
    ),
    "DEEPSYNTH_SAMPLES_RATE": EnvVar(float, 0.01, "Fraction of requests stored (0..1)."),
    "DEEPSYNTH_SAMPLES_MAX_COUNT": EnvVar(
        int, 1000, "Keep at most this many samples (oldest deleted first)."
    ),
    "DEEPSYNTH_SAMPLES_MAX_AGE_DAYS": EnvVar(float, 7.0, "Delete samples older than this many days."),
    "DEEPSYNTH_SAMPLES_REDACT": EnvVar(
        parse_bool, True, "Redact e-mails, phone numbers, IBANs and card numbers in stored texts."
    ),
    "DEEPSYNTH_SAMPLES_IMAGE": EnvVar(str, "blur", "Stored image: `thumbnail`, `blur` or `omit`."),
    "DEEPSYNTH_SAMPLES_THUMBNAIL_PX": EnvVar(int, 256, "Longest side of a stored image, in pixels."),
    "DEEPSYNTH_SAMPLES_SEED": EnvVar(int, None, "Seed of the sampling decision (reproducible tests)."),
    # ---- feedback posted to /v1/feedback (deepsynth.observability.feedback, docs/privacy.md)
    "DEEPSYNTH_FEEDBACK_DIR": EnvVar(
        str,
        None,
        "Store feedback here (`deepsynth serve --feedback-dir`); unset: `POST /v1/feedback` is refused.",
    ),
    "DEEPSYNTH_FEEDBACK_KEEP_INPUTS_HOURS": EnvVar(
        float,
        24.0,
        "Keep each request's input files this long, so feedback can name its request id (0: never).",
    ),
    "DEEPSYNTH_FEEDBACK_MAX_INPUTS": EnvVar(int, 1000, "Keep the inputs of at most this many requests."),
    "DEEPSYNTH_FEEDBACK_MAX_COUNT": EnvVar(
        int, 10000, "Keep at most this many corrections (oldest deleted first)."
    ),
    "DEEPSYNTH_FEEDBACK_MAX_AGE_DAYS": EnvVar(float, 365.0, "Delete corrections older than this many days."),
    # ---- models and clients
    "DEEPSYNTH_API_TOKEN": EnvVar(
        str, None, "Bearer token: required by `deepsynth serve`, sent by the remote client (`server:URL`)."
    ),
    "DEEPSYNTH_TRUST_REMOTE_CODE": EnvVar(
        parse_bool, False, "Allow hub remote code (DeepSeek-OCR v1 only; runs code from the hub repository)."
    ),
    "DEEPSYNTH_SMOKE_MODEL": EnvVar(
        str, None, "Checkpoint for `FAMILY:smoke` (`make deepseek-ocr-smoke`); unset: a tiny random model."
    ),
}


def read(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The typed value of ``name`` in ``env`` (default: the process environment)."""
    var = ENVIRONMENT_VARIABLES[name]
    raw = (os.environ if env is None else env).get(name, "")
    if not raw.strip():
        return var.default
    try:
        return var.type(raw.strip())
    except ValueError as exc:
        kind = getattr(var.type, "__name__", "value").replace("parse_", "")
        raise ValueError(f"{name}={raw!r} is not a valid {kind} ({exc})") from None


def __getattr__(name: str) -> Any:
    if name in ENVIRONMENT_VARIABLES:
        return read(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *ENVIRONMENT_VARIABLES]


def markdown_table() -> str:
    """The table as Markdown (name, type, default, meaning) for docs/environment.md."""
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, var in ENVIRONMENT_VARIABLES.items():
        kind = {parse_bool: "bool"}.get(var.type, getattr(var.type, "__name__", "str"))
        default = "(unset)" if var.default is None else f"`{var.default}`"
        rows.append(f"| `{name}` | {kind} | {default} | {var.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
