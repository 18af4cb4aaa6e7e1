"""Privacy-safe sample store: persist a small, redacted fraction of requests for auditing. Off by default.

Filled in by the sample-store work; until then only the no-op store exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class NoopSampleStore:
    """The default: stores nothing, writes nothing."""

    enabled = False

    def maybe_store(
        self, request_id: str, image: Any, text: str, timings: Mapping[str, float], model_id: str
    ) -> bool:
        return False

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def sample_store_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> NoopSampleStore:
    return NoopSampleStore()
