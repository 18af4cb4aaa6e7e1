"""deepsynth.observability: Prometheus metrics, JSON logs, OpenTelemetry spans and a privacy-safe sample store.

The inference service uses one :class:`Observability` (``Observability.from_env(model_id=...)``); see
docs/observability.md and docs/privacy.md.
"""

from deepsynth.observability.core import Observability, RequestContext

__all__ = ["Observability", "RequestContext"]
