"""ProcessEngine: run the model in its own process, so HTTP work and the model never share one GIL.

A server's event loop parses multipart bodies, decodes images and writes JSON; a small or CPU-bound model
spends much of its time in Python too. In one process the two take turns on the GIL, so every request's
HTTP cost is added to the model's time. vLLM's V1 engine splits its API server from the engine core for the
same reason. ``ProcessEngine`` is an :class:`~deepsynth.models.base.OCREngine` whose ``recognize`` sends the
batch to a child process (``multiprocessing`` spawn, one pipe) that owns the real engine:

    engine = ProcessEngine("deepseek_ocr2:runs/x/best", threads=1, timeout_s=60, max_rss_mb=8000)
    OCRService(engine)                 # batching, guard and retries stay in the parent

* ``pipelined``: a second batch may be sent while one runs (replies come back in order), so the child
  starts the next batch the moment it finishes one; the service's batcher uses this (``max_inflight=2``).
* Streaming (``recognize_stream``, one image): the child sends ``("piece", text)`` messages while the model
  generates, before the batch's reply; the caller reading that reply hands them to the job's ``emit``. When
  the job's ``stop()`` turns True (a client went away) the parent writes the job's id into a shared value
  that the child's stopping criterion reads after every token, so the generation ends at once.
* Loading happens in the child; a load error is raised in the parent by the constructor, with the child's
  message (``ModelLoadError`` stays ``ModelLoadError``).
* An engine error on a batch comes back as the same exception type (or a RuntimeError naming it).
* LoRA adapters (``lora={name: dir}``, ``max_loras``): the child holds the base and its adapters
  (:class:`~deepsynth.models.vlm.multi_lora.LoraSet`); each image of a batch names its adapter, and
  :meth:`ProcessEngine.add_adapter` / :meth:`ProcessEngine.remove_adapter` change the set while serving
  (queued in order with the batches; a recycled child starts with the current set).
* Budgets: a batch that runs longer than ``timeout_s`` or makes the child's resident memory exceed
  ``max_rss_mb`` is abandoned — the child is killed and a fresh one loaded (*recycled*), the batch raises
  :class:`ModelBudgetExceeded`, and the batches queued behind it are sent again to the new child. A child
  that is over ``max_rss_mb`` after a batch (memory not returned) is recycled without failing anything.
* If the child dies on its own (killed, out of memory), calls raise :class:`ModelProcessDied` naming the exit
  code and ``alive`` turns False: the server then answers 503 and exits with status 1, so its supervisor
  restarts it.
* The child ignores Ctrl-C (the parent drains and then closes it), exits when the pipe closes, and exits
  when its parent dies (it watches the parent's sentinel), so it is never orphaned.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from PIL import Image

from deepsynth.inference.engine import Adapters, NoAdapters, ServingEngine
from deepsynth.inference.limits import LimitExceeded
from deepsynth.models.base import Prediction, StopCheck, TextSink
from deepsynth.models.generation import GenerationConfig

log = logging.getLogger("deepsynth.inference")

_POLL_S = 0.05  # how often a waiting caller checks the running batch's time and memory


class ModelProcessDied(RuntimeError):
    """The model's worker process is gone; the server is no longer ready."""


class ModelBudgetExceeded(LimitExceeded):
    """A batch ran over the model time budget or the memory ceiling; the model process was recycled."""


@dataclass(frozen=True)
class AdapterCall:
    """A message to the model process: register LoRA adapter ``name`` from ``path`` (None: remove it)."""

    name: str
    path: str | None


LoraState = tuple[dict[str, str], int]  # (adapter name -> directory, max_loras)


def _child_main(
    conn: Connection,
    cancel: Any,
    spec: str,
    engine_kwargs: dict[str, Any],
    threads: int | None,
    lora: LoraState | None = None,
) -> None:
    """Entry point of the model process: load, report, then answer batches until the pipe closes.

    A batch is ``(images, generation, adapters, stream_id)``; a non-zero ``stream_id`` streams its one image
    while ``cancel.value`` (written by the parent) is not that id."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (after draining)
    _exit_with_parent()
    if threads:
        import torch

        torch.set_num_threads(threads)
    from deepsynth.inference.engine import as_serving_engine
    from deepsynth.inference.service import load_model
    from deepsynth.observability.metrics import local_gpu_memory

    try:
        model = load_model(spec, **engine_kwargs)
        if lora is not None:
            from deepsynth.models.vlm.multi_lora import LoraSet

            model = LoraSet.over(model, *lora)
        engine = as_serving_engine(model)
    except BaseException as exc:  # noqa: BLE001 - every load failure goes back to the parent
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", getattr(engine, "name", spec), engine.streams))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg is None:  # nothing to save: skip the interpreter's teardown (torch's takes seconds)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        try:
            if isinstance(msg, AdapterCall):
                if msg.path is None:
                    engine.remove_adapter(msg.name)
                else:
                    engine.add_adapter(msg.name, msg.path)
                result = None
            elif msg[3]:
                images, generation, adapters, stream_id = msg
                result = [
                    engine.recognize_stream(
                        images[0],
                        generation,
                        lambda piece: conn.send(("piece", piece)),
                        lambda sid=stream_id: cancel.value == sid,
                        adapters[0] if adapters else None,
                    )
                ]
            else:
                result = list(engine.recognize(*msg[:3]))
            reply = ("ok", result, local_gpu_memory())
        except Exception as exc:  # noqa: BLE001 - the parent re-raises it for the batch's callers
            reply = ("error", _portable(exc), local_gpu_memory())
        conn.send(reply)


def _exit_with_parent() -> None:
    """Exit this (child) process as soon as its parent dies, even in the middle of a batch."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's end of the sentinel pipe closes: the parent is gone
        os._exit(0)

    threading.Thread(target=watch, name="deepsynth-parent-watch", daemon=True).start()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@dataclass
class _Job:
    """One batch (or adapter call) sent to the child; ``done`` once its reply (or its error) is in. A
    streamed job has an id (``message[3]``), ``emit`` for its pieces and ``stop``, polled while it runs."""

    message: tuple[list[Image.Image], GenerationConfig | None, Adapters, int] | AdapterCall
    emit: TextSink | None = None
    stop: StopCheck | None = None
    stopping: bool = False
    sent_at: float = 0.0
    done: bool = False
    reply: tuple[Any, ...] = field(default=())
    error: BaseException | None = None


class ProcessEngine(ServingEngine):
    """An OCREngine proxy for ``load_model(spec, **engine_kwargs)`` running in a child process.

    ``timeout_s`` (0: none) bounds the model time of one batch; ``max_rss_mb`` the child's resident memory
    (0: three times its size after loading, at least 2048 MB more; None: no ceiling). ``lora`` (a dict,
    possibly empty) makes the model a LoRA base serving those adapters, at most ``max_loras`` loaded."""

    pipelined = True  # recognize() may be called from several threads; the child queues the batches

    def __init__(
        self,
        spec: str,
        *,
        engine_kwargs: dict[str, Any] | None = None,
        threads: int | None = None,
        start_timeout_s: float = 600.0,
        timeout_s: float = 0.0,
        max_rss_mb: float | None = 0.0,
        lora: dict[str, str] | None = None,
        max_loras: int = 4,
    ):
        self.spec = spec
        self._args = (spec, engine_kwargs or {}, threads)
        self.lora = None if lora is None else {name: str(path) for name, path in lora.items()}
        self.max_loras = max_loras
        self.start_timeout_s = start_timeout_s
        self.timeout_s = timeout_s
        self._lock = threading.Condition()  # guards the fields below
        self._send_lock = threading.Lock()  # one writer to the pipe at a time, in queue order
        self._pending: collections.deque[_Job] = collections.deque()  # sent, not answered, in send order
        self._reading = False  # one caller at a time reads replies (the owner of the oldest pending job)
        self._respawning = False  # a fresh child is loading; batches wait in _pending and are sent after
        self._respawner: threading.Thread | None = None
        self._last_reply = 0.0
        self._closed = False
        self._stopped = False  # the child was stopped by us (close / recycle), not killed from outside
        self._dead: ModelProcessDied | None = None
        self._gpu_memory: list[tuple[str, str, float]] = []
        self.recycles: list[str] = []  # why the child was replaced, one entry per recycle
        self._stream_ids = itertools.count(1)
        self.streams = False  # set by the child once its model is loaded
        self._spawn()
        self.max_rss_bytes = self._rss_ceiling(max_rss_mb)

    # -- the child ---------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        """Start a child and wait until its model is loaded (raises the child's load error)."""
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and torch state
        self._conn, child_conn = ctx.Pipe()
        self._cancel = ctx.Value("q", 0, lock=False)  # the id of the streamed job the child must stop
        self._proc = ctx.Process(
            target=_child_main,
            args=(
                child_conn,
                self._cancel,
                *self._args,
                None if self.lora is None else (dict(self.lora), self.max_loras),
            ),
            name=f"deepsynth-model:{self.spec}",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._conn.poll(0.1):
            if self._closed:  # close() was called while a recycled child loads
                self._stop_child(0.0)
                raise ModelProcessDied(f"the model process for {self.spec!r} was stopped while loading")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(
                    f"model process for {self.spec!r} did not load within {self.start_timeout_s:g} s"
                )
        try:
            status, payload, *streams = self._conn.recv()[:3]
        except (EOFError, OSError) as exc:
            raise self._died() from exc
        if status == "error":
            self.close()
            raise payload
        self.name: str = payload
        self.streams = bool(streams and streams[0])
        self._psutil = _process(self._proc.pid)
        log.info("model process started", extra={"model": self.spec, "pid": self._proc.pid})

    def _rss_ceiling(self, max_rss_mb: float | None) -> int | None:
        if max_rss_mb is None:
            return None
        if max_rss_mb > 0:
            return int(max_rss_mb * 2**20)
        loaded = self.rss()
        return max(3 * loaded, loaded + 2048 * 2**20)

    def rss(self) -> int:
        """The model process's resident memory in bytes (0 when it is gone)."""
        try:
            return self._psutil.memory_info().rss
        except Exception:  # noqa: BLE001 - the process just exited
            return 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return not self._closed and self._dead is None and (self._respawning or self._proc.is_alive())

    # -- batches -----------------------------------------------------------------------------------------
    def recognize(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        adapters: Adapters = None,
    ) -> list[Prediction]:
        """Send one batch to the model process and wait for its predictions (thread-safe; batches sent by
        other threads meanwhile queue up in the child and run right after)."""
        return self._call(_Job((list(images), generation, None if adapters is None else list(adapters), 0)))

    def recognize_stream(
        self,
        image: Image.Image,
        generation: GenerationConfig | None,
        emit: TextSink,
        stop: StopCheck | None = None,
        adapter: str | None = None,
    ) -> Prediction:
        """Read one image in the child, ``emit`` getting its pieces as the child sends them (in the calling
        thread); ``stop()`` is polled every 50 ms and ends the child's generation when True."""
        adapters = None if adapter is None else [adapter]
        (pred,) = self._call(_Job(([image], generation, adapters, next(self._stream_ids)), emit, stop))
        return pred

    @property
    def serves_adapters(self) -> bool:
        return self.lora is not None

    def add_adapter(self, name: str, path: str | Path) -> None:
        if self.lora is None:
            raise NoAdapters(f"model {self.spec!r} serves no LoRA adapters")
        self._change_adapters(name, str(path))

    def remove_adapter(self, name: str) -> None:
        if self.lora is None:
            raise NoAdapters(f"model {self.spec!r} serves no LoRA adapters")
        self._change_adapters(name, None)

    def _change_adapters(self, name: str, path: str | None) -> None:
        """Apply one adapter call in the child (which checks it); the set is updated first, so a child
        recycled meanwhile starts with it, and restored if the child refuses it."""
        assert self.lora is not None
        before = dict(self.lora)
        if path is None:
            self.lora.pop(name, None)
        else:
            self.lora[name] = path
        try:
            self._call(_Job(AdapterCall(name, path)))
        except BaseException:
            self.lora = before
            raise

    def _call(self, job: _Job) -> Any:
        """Send ``job`` and wait for its reply (raising the child's error)."""
        self._send(job)
        with self._lock:
            while not job.done:
                if self._reading or self._respawning or self._pending[0] is not job:
                    self._lock.wait()
                    continue
                self._reading = True
                self._lock.release()
                try:
                    self._read_reply(job)
                finally:
                    self._lock.acquire()
                    self._reading = False
                    self._lock.notify_all()
        if job.error is not None:
            raise job.error
        status, payload, self._gpu_memory = job.reply
        if status == "error":
            raise payload
        return payload

    def _send(self, job: _Job) -> None:
        """Queue ``job`` and write it to the child; while a fresh child loads it only waits in the queue.

        The write happens outside the state lock (a big batch blocks on a full pipe until the child reads
        it, and the reader must still be able to recycle a child that never will); ``_send_lock`` keeps
        writes in queue order."""
        with self._send_lock:
            with self._lock:
                if not self.alive:
                    raise self._dead or self._died()
                self._pending.append(job)
                if self._respawning:
                    return
            self._write(job)

    def _write(self, job: _Job) -> None:
        job.sent_at = time.monotonic()
        # the child is gone (or its pipe was closed under this write, TypeError): the reader reports it
        with contextlib.suppress(OSError, ValueError, TypeError):
            self._conn.send(job.message)

    def _read_reply(self, job: _Job) -> None:
        """Wait for the reply to ``job`` (the oldest pending one) while checking its budgets."""
        while True:
            try:
                if self._conn.poll(_POLL_S):
                    reply = self._conn.recv()
                    if reply[0] != "piece":
                        break
                    if job.emit is not None:  # the child streams only the job it runs: this one
                        job.emit(reply[1])
            except (EOFError, OSError, ValueError):
                return self._fail_all(self._died())
            if job.stop is not None and not job.stopping and job.stop():
                job.stopping = True
                self._cancel.value = job.message[3]
            if not self._proc.is_alive() and not self._conn.poll(0):
                return self._fail_all(self._died())
            if not job.sent_at:  # not written yet (a fresh child is being sent its queue)
                continue
            started = max(job.sent_at, self._last_reply)  # the child runs batches one after the other
            over = self._over_budget(time.monotonic() - started)
            if over is not None:
                return self._recycle(over, guilty=job)
        with self._lock:
            self._pending.popleft()
            job.reply, job.done = reply, True
            self._last_reply = time.monotonic()
        if self.max_rss_bytes is not None and self.rss() > self.max_rss_bytes:
            self._recycle(f"its memory stayed above {self.max_rss_bytes / 2**20:.0f} MB after a batch")

    def _over_budget(self, running_s: float) -> ModelBudgetExceeded | None:
        if self.timeout_s and running_s > self.timeout_s:
            return ModelBudgetExceeded(
                "model_timeout_s",
                f"the model spent more than {self.timeout_s:g} s on this batch; it was stopped",
                status=504,
                kind="model_timeout",
            )
        rss = self.rss()
        if self.max_rss_bytes is not None and rss > self.max_rss_bytes:
            return ModelBudgetExceeded(
                "model_max_rss_mb",
                f"the model process grew to {rss / 2**20:.0f} MB on this batch (ceiling "
                f"{self.max_rss_bytes / 2**20:.0f} MB); it was stopped",
                status=413,
                kind="model_memory_exceeded",
            )
        return None

    def _recycle(self, why: ModelBudgetExceeded | str, guilty: _Job | None = None) -> None:
        """Kill the child and load a fresh one in the background, which then gets every batch still waiting;
        ``guilty`` (the batch that ran over budget) fails at once."""
        with self._lock:
            if guilty is not None:
                self._pending.popleft()
                guilty.error, guilty.done = why, True  # type: ignore[assignment]
            if self._closed:
                return self._fail_all(self._died())
            log.warning(
                "recycling the model process",
                extra={
                    "model": self.spec,
                    "pid": self._proc.pid,
                    "reason": str(why),
                    "queued": len(self._pending),
                },
            )
            self.recycles.append(str(why))
            self._stop_child(0.0)
            self._respawning = True
            self._respawner = threading.Thread(
                target=self._respawn, name="deepsynth-model-respawn", daemon=True
            )
            self._respawner.start()

    def _respawn(self) -> None:
        try:
            self._spawn()
        except BaseException as exc:  # noqa: BLE001 - a model that cannot reload is fatal
            with self._lock:
                self._respawning = False
                if not self._closed:
                    self._dead = ModelProcessDied(
                        f"the model process for {self.spec!r} could not be restarted: {exc}"
                    )
            return self._fail_all(self._dead or self._died())
        with self._send_lock:
            with self._lock:
                self._respawning = False
                if self._closed:  # closed while loading
                    self._stop_child(0.0)
                    return self._fail_all(self._died())
                waiting = list(self._pending)
                for job in waiting:
                    job.sent_at, job.stopping = 0.0, False  # the fresh child has its own stop value
                self._last_reply = 0.0
                self._lock.notify_all()
            for job in waiting:  # outside the state lock: the reader may collect replies meanwhile
                self._write(job)

    def _fail_all(self, exc: ModelProcessDied) -> None:
        with self._lock:
            self._dead = self._dead or (None if self._closed else exc)
            while self._pending:
                job = self._pending.popleft()
                job.error, job.done = exc, True
            self._lock.notify_all()

    def gpu_memory(self) -> list[tuple[str, str, float]]:
        """The model process's CUDA memory (device, kind, bytes) as of its last batch; [] on CPU."""
        return list(self._gpu_memory)

    def _died(self) -> ModelProcessDied:
        if self._closed and self._stopped:
            return ModelProcessDied(
                f"the model process for {self.spec!r} was stopped (the server is shutting down)"
            )
        self._proc.join(1.0)
        code = self._proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return ModelProcessDied(
            f"the model process for {self.spec!r} (pid {self._proc.pid}) is gone ({why}); "
            "restart the server (out of memory is the usual cause)"
        )

    # -- stopping ----------------------------------------------------------------------------------------
    def _stop_child(self, grace_s: float) -> None:
        """Make sure the child is gone: ask it (when ``grace_s`` > 0), then SIGTERM, then SIGKILL."""
        self._stopped = self._proc.is_alive()  # else it died on its own and _died() says how
        if grace_s > 0 and self._send_lock.acquire(timeout=grace_s):
            try:
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(None)
            finally:
                self._send_lock.release()
            self._proc.join(grace_s)
        for stop in (self._proc.terminate, self._proc.kill):
            if not self._proc.is_alive():
                break
            stop()
            self._proc.join(5.0)
        self._conn.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child (idempotent): at once when a batch is still running, else after it exits cleanly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = bool(self._pending)
            respawner = self._respawner
        if respawner is not None and respawner.is_alive():
            respawner.join(timeout_s)  # it sees _closed, stops the loading child and fails what waits
            return
        self._stop_child(0.0 if busy else timeout_s)

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout_s=1.0)


def _process(pid: int | None) -> Any:
    import psutil

    return psutil.Process(pid)
