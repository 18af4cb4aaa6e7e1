"""HTTP-level settings of the server (resource budgets live in :class:`ServingLimits`, batching on the service)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from deepsynth.inference.limits import RequestBudget, ServingLimits
from deepsynth.inference.service import OCRService
from deepsynth.observability.feedback import FeedbackSettings


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token required on /v1/* when set
    warmup: bool = True
    engine_check_s: float = 1.0  # how often the server checks that the model process is alive
    limits: ServingLimits = field(default_factory=ServingLimits)  # every resource budget
    docs: bool = False  # /docs (Swagger UI, whose assets come from a CDN); /openapi.json is always served
    feedback: FeedbackSettings | None = None  # POST /v1/feedback stores corrections (None: refused, 403)
    registry_poll_s: float = 30.0  # seconds between checks of models:/NAME@ALIAS aliases (0: off)

    def budget(self, service: OCRService, dpi: float | None = None) -> RequestBudget:
        """A fresh budget for one request (at the request's own PDF resolution, if it asked for one)."""
        limits = dataclasses.replace(self.limits, pdf_dpi=dpi) if dpi else self.limits
        return RequestBudget(limits, service.geometry)
