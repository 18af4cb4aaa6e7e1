"""The HTTP API (FastAPI), a thin layer over :class:`~deepsynth.inference.service.OCRService`, in parts:

* :mod:`.app` — the app factory and runner; :mod:`.settings` — HTTP settings;
* :mod:`.routers` — one router per surface: ``ocr`` (``POST /v1/ocr``), ``openai`` (``POST
  /v1/chat/completions``, ``GET /v1/models``), ``feedback`` (``POST /v1/feedback``), ``admin`` (``/healthz``, ``/readyz``, ``/metrics``);
* :mod:`.protocol` — pydantic request/response models (``extra="forbid"``), declared in ``/openapi.json``;
* :mod:`.errors` — one JSON error shape and the exception → status table; :mod:`.middleware` — token and
  body-size guard, JSON errors at shutdown; :mod:`.bodies` — parsing and decoding of request bodies.
"""

from deepsynth.inference.api.app import create_app, run
from deepsynth.inference.api.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "run"]
