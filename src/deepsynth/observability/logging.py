"""Structured JSON logs with a request id that follows the request through every stage.

``request_id_var`` is a :class:`contextvars.ContextVar`; :class:`RequestIdFilter` copies it onto every log record
(so any ``logging.getLogger("deepsynth...")`` call inside a request carries it), and :class:`JsonFormatter` writes
one JSON object per line with the record's ``extra`` fields (durations, stage names, ...).

OCR text never goes into logs: only ids, sizes and timings.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import IO, Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "deepsynth_request_id", default=None
)

LOGGER_NAME = "deepsynth"
_HANDLER_MARK = "_deepsynth_json_handler"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a field.
# ``color_message`` is uvicorn's ANSI-coloured copy of ``msg``.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class RequestIdFilter(logging.Filter):
    """Put the current request id (if any) on each record as ``record.request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, then any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "request_id" and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(
    level: str | int = "INFO",
    fmt: str = "json",
    stream: IO[str] | None = None,
    logger_name: str = LOGGER_NAME,
) -> logging.Logger:
    """Install (once, idempotently) a handler on the ``deepsynth`` logger; ``fmt`` is ``json`` or ``text``.

    Calling it again replaces the previous DeepSynth handler, so tests and servers can re-point the stream.
    Records still propagate to the root logger (a no-op unless the application configured root handlers).
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"DEEPSYNTH_LOG_FORMAT must be 'json' or 'text', got {fmt!r}")
    if fmt == "json":
        hide_library_progress_bars()
    logger = logging.getLogger(logger_name)
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    logger.addHandler(handler)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    # propagation stays on: an application (or pytest's caplog) that configured the root logger keeps seeing
    # deepsynth records; set logging.getLogger("deepsynth").propagate = False to avoid seeing them twice.
    return logger


def hide_library_progress_bars() -> None:
    """No tqdm bars from transformers / huggingface_hub ("Loading weights", "Writing model shards"): they would
    cut through DeepSynth's own bar and JSON log lines. Set before the libraries load (child processes
    inherit it), and switched off in them if they already have."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def uvicorn_log_config(fmt: str) -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` for uvicorn's own lines (start, stop, bind errors) in DeepSynth's JSON
    format when ``fmt`` is ``json``; None (uvicorn's default text) otherwise."""
    if fmt != "json":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"],
               "stream": "ext://sys.stderr"}  # fmt: skip
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "loggers": {
            name: {"handlers": ["json"], "level": "INFO", "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },  # fmt: skip
    }
