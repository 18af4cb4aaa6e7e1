"""ProcessEngine: run the model in its own process, so HTTP work and the model never share one GIL.

A server's event loop parses multipart bodies, decodes images and writes JSON; a small or CPU-bound model
spends much of its time in Python too. In one process the two take turns on the GIL, so every request's
HTTP cost is added to the model's time. vLLM's V1 engine splits its API server from the engine core for the
same reason. ``ProcessEngine`` is an :class:`~deepsynth.models.base.OCREngine` whose ``recognize`` sends the
batch to a child process (``multiprocessing`` spawn, one pipe) that owns the real engine:

    engine = ProcessEngine("deepseek_ocr2:runs/x/best", threads=1)
    OCRService(engine)                 # batching, guard and retries stay in the parent

* ``pipelined``: a second batch may be sent while one runs (replies come back in order), so the child
  starts the next batch the moment it finishes one; the service's batcher uses this (``max_inflight=2``).
* Loading happens in the child; a load error is raised in the parent by the constructor, with the child's
  message (``ModelLoadError`` stays ``ModelLoadError``).
* An engine error on a batch comes back as the same exception type (or a RuntimeError naming it).
* If the child dies (killed, out of memory), calls raise :class:`ModelProcessDied` naming the exit code and
  ``alive`` turns False: the server then answers 503 and exits with status 1, so its supervisor restarts it.
* The child ignores Ctrl-C (the parent drains and then closes it) and exits when the pipe closes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from deepsynth.inference.engine import ServingEngine
from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig

log = logging.getLogger("deepsynth.inference")


class ModelProcessDied(RuntimeError):
    """The model's worker process is gone; the server is no longer ready."""


def _child_main(conn: Connection, spec: str, engine_kwargs: dict[str, Any], threads: int | None) -> None:
    """Entry point of the model process: load, report, then answer batches until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (after draining)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from deepsynth.inference.service import load_model
    from deepsynth.observability.metrics import local_gpu_memory

    try:
        engine = load_model(spec, **engine_kwargs)
    except BaseException as exc:  # noqa: BLE001 - every load failure goes back to the parent
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", getattr(engine, "name", spec)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        images, generation = msg
        try:
            reply = ("ok", list(engine.recognize(images, generation)), local_gpu_memory())
        except Exception as exc:  # noqa: BLE001 - the parent re-raises it for the batch's callers
            reply = ("error", _portable(exc), local_gpu_memory())
        conn.send(reply)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class ProcessEngine(ServingEngine):
    """An OCREngine proxy for ``load_model(spec, **engine_kwargs)`` running in a child process."""

    pipelined = True  # recognize() may be called from several threads; the child queues the batches

    def __init__(
        self,
        spec: str,
        *,
        engine_kwargs: dict[str, Any] | None = None,
        threads: int | None = None,
        start_timeout_s: float = 600.0,
    ):
        self.spec = spec
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and torch state
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child_main,
            args=(child_conn, spec, engine_kwargs or {}, threads),
            name=f"deepsynth-model:{spec}",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._send_lock = threading.Lock()
        self._turn = threading.Condition()  # replies arrive in send order: each caller waits for its turn
        self._sent = self._received = 0
        self._closed = False
        self._gpu_memory: list[tuple[str, str, float]] = []
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise TimeoutError(f"model process for {spec!r} did not load within {start_timeout_s:g} s")
        status, payload = self._receive()[:2]
        if status == "error":
            self.close()
            raise payload
        self.name: str = payload
        log.info("model process started", extra={"model": spec, "pid": self._proc.pid})

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return not self._closed and self._proc.is_alive()

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Send one batch to the model process and wait for its predictions (thread-safe; batches sent by
        other threads meanwhile queue up in the child and run right after)."""
        with self._send_lock:
            if not self.alive:
                raise self._died()
            ticket = self._sent
            try:
                self._conn.send((list(images), generation))
            except (BrokenPipeError, OSError) as exc:
                raise self._died() from exc
            self._sent += 1
        with self._turn:
            self._turn.wait_for(lambda: self._received == ticket)
            try:
                status, payload, self._gpu_memory = self._receive()
            finally:
                self._received += 1
                self._turn.notify_all()
        if status == "error":
            raise payload
        return payload

    def gpu_memory(self) -> list[tuple[str, str, float]]:
        """The model process's CUDA memory (device, kind, bytes) as of its last batch; [] on CPU."""
        return list(self._gpu_memory)

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died() from exc

    def _died(self) -> ModelProcessDied:
        self._proc.join(1.0)
        code = self._proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return ModelProcessDied(
            f"the model process for {self.spec!r} (pid {self._proc.pid}) is gone ({why}); "
            "restart the server (out of memory is the usual cause)"
        )

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit, then make sure it does (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout_s)
        self._conn.close()

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout_s=1.0)
