"""Publishing a private Prometheus registry from a job that is not a server (training, the improvement loop).

Three ways, as an operator picks: a textfile rewritten atomically on every :meth:`MetricsPublisher.publish`
(the node_exporter textfile-collector format), an HTTP ``/metrics`` endpoint on ``addr:port`` (loopback by
default) for a long-running job, and a push to a Prometheus Pushgateway for a job that ends before a scrape.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile


class MetricsPublisher:
    """Textfile always (when given), ``/metrics`` when ``port`` is set (0 = any free port), push when
    ``pushgateway`` is set (``job`` and ``grouping_key`` name the group)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        textfile: str | Path | None,
        *,
        port: int | None = None,
        addr: str = "127.0.0.1",
        pushgateway: str | None = None,
        job: str,
        grouping_key: dict[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.textfile = Path(textfile) if textfile is not None else None
        if self.textfile is not None:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)
        self.pushgateway = pushgateway
        self.job = job
        self.grouping_key = grouping_key or {}
        self._server = None
        self.port: int | None = None
        if port is not None:
            from prometheus_client import start_http_server

            self._server, _ = start_http_server(port, addr=addr, registry=registry)
            self.port = self._server.server_port

    def publish(self) -> None:
        if self.textfile is not None:
            write_to_textfile(str(self.textfile), self.registry)
        if self.pushgateway:
            push_to_gateway(self.pushgateway, job=self.job, registry=self.registry,
                            grouping_key=self.grouping_key, timeout=5)  # fmt: skip

    def close(self) -> None:
        """Publish once more and stop the endpoint."""
        self.publish()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
