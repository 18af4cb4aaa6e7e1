"""AsyncBatcher: turn concurrent single-item requests into model batches (pure asyncio).

Callers ``submit`` one item each. A single worker task gathers items until ``max_batch_size`` is reached or
``max_wait_ms`` has passed since the oldest item of the batch was accepted (a full queue never waits), runs
the (blocking) batch function in a worker thread so the event loop stays free, and hands each result back to
its own caller.

* Backpressure: the queue is bounded; a full queue raises :class:`QueueFull` at once (the server answers 429).
* Timeouts and cancellation: a caller that gives up (timeout, disconnected client) is dropped from the queue
  before its batch runs; results for callers that already left are discarded.
* Isolation: if a batch raises, each of its items is retried alone, so one bad input fails only its own call.
* Graceful shutdown: :meth:`close` stops accepting new items and, by default, finishes every accepted one;
  with a ``timeout_s``, whatever is still unfinished then fails with :class:`ShuttingDown` (HTTP 503).
* Solo items (``solo(item)`` True, e.g. a streamed answer): run in a batch of their own, in queue order.
* Pipelining (``max_inflight`` > 1, for engines that queue work themselves, such as a model in another
  process): while a batch runs, the next one is handed over as soon as a *full* batch is queued, so the
  engine starts it with no gap; a partial batch still waits for the engine to be free and takes whatever
  arrived meanwhile, so batches stay as large under moderate load as without pipelining.

For per-stage timing, :meth:`enqueue` returns a :class:`Ticket` whose ``started`` and ``result`` can be
awaited separately (queue wait vs model time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """The batcher's queue is full; the caller should retry later (HTTP 429)."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down or not started; no new work is accepted (HTTP 503)."""


class ShuttingDown(BatcherClosed):
    """The batcher is closing: new work is refused, and work not finished within the drain time is dropped."""


@dataclass(eq=False)  # identity equality: tickets are kept in a set
class Ticket(Generic[R]):
    """One submitted item: ``started`` resolves when its batch starts, ``result`` when it is done."""

    item: Any
    started: asyncio.Future[int] = field(repr=False)  # resolves to the batch size
    result: asyncio.Future[R] = field(repr=False)
    enqueued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Give up on this item (it is skipped if its batch has not started yet)."""
        for fut in (self.started, self.result):
            if not fut.done():
                fut.cancel()

    @property
    def abandoned(self) -> bool:
        return self.result.done()


@dataclass
class BatcherStats:
    """Counters kept by the batcher itself (the observability layer gets the same data via ``on_batch``)."""

    batches: int = 0
    items: int = 0
    max_batch_size_seen: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    retried_batches: int = 0
    failed_items: int = 0
    skipped_items: int = 0


_STOP = object()


class AsyncBatcher(Generic[T, R]):
    """Micro-batches calls to ``batch_fn(items) -> results`` (same length, same order).

    ``on_batch(size, queue_depth)`` is called on the event loop before each batch runs.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        timeout_s: float | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        name: str = "batcher",
        max_inflight: int = 1,
        solo: Callable[[T], bool] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self.name = name
        self.max_inflight = max_inflight
        self.solo = solo
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[Any] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._accepting = False
        self._closing = False
        self._live: set[Ticket[R]] = set()  # accepted and not finished (queued or in a running batch)
        self._inflight = 0
        self._full_batch = asyncio.Event()  # set when a full batch is queued (wakes a pipelined worker)
        self._held: Ticket[R] | None = None  # a solo item taken from the queue: the next batch is it alone

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker task on the running event loop (idempotent)."""
        if self._worker is not None and not self._worker.done():
            return
        self._queue = asyncio.Queue()  # bounded by our own check so the stop marker always fits
        self._full_batch = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.max_inflight, thread_name_prefix=self.name
        )
        self._worker = asyncio.create_task(self._run(), name=f"{self.name}-worker")
        self._accepting = True
        self._closing = False

    async def close(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop accepting work; with ``drain`` finish every accepted item (for at most ``timeout_s``; what is
        unfinished then fails with :class:`ShuttingDown`), else cancel what has not started."""
        if self._worker is None:
            return
        self._accepting = False
        self._closing = True
        assert self._queue is not None
        if not drain:
            if self._held is not None:
                self._held.cancel()
                self._held = None
            while not self._queue.empty():
                entry = self._queue.get_nowait()
                if isinstance(entry, Ticket):
                    self._inflight -= 1
                    entry.cancel()
        self._queue.put_nowait(_STOP)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
        except TimeoutError:
            self._worker.cancel()
            dropped = ShuttingDown(
                f"{self.name} is shutting down and this request did not finish within the {timeout_s:g} s "
                "drain time; retry on another replica"
            )
            for ticket in list(self._live):
                for fut in (ticket.started, ticket.result):
                    if not fut.done():
                        fut.set_exception(dropped)
                        fut.exception()  # retrieved: no "never retrieved" warning when nobody awaits it
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._worker = None

    async def __aenter__(self) -> AsyncBatcher[T, R]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._accepting and self._worker is not None and not self._worker.done()

    @property
    def queue_depth(self) -> int:
        """Items accepted but not yet started."""
        return self._inflight

    # -- submitting ------------------------------------------------------------------------------------
    def enqueue(self, item: T) -> Ticket[R]:
        """Accept one item or raise QueueFull / BatcherClosed at once (never waits)."""
        if self._closing:
            raise ShuttingDown(f"{self.name} is shutting down; retry on another replica")
        if not self.running:
            raise BatcherClosed(f"{self.name} is not accepting work (shutting down or not started)")
        assert self._queue is not None
        if self._inflight >= self.max_queue:
            raise QueueFull(f"{self.name} queue is full ({self.max_queue} items waiting); retry later")
        loop = asyncio.get_running_loop()
        ticket: Ticket[R] = Ticket(item=item, started=loop.create_future(), result=loop.create_future())
        self._inflight += 1
        self._live.add(ticket)
        ticket.result.add_done_callback(lambda _: self._live.discard(ticket))
        self._queue.put_nowait(ticket)
        if self.max_inflight > 1 and self._queue.qsize() >= self.max_batch_size:
            self._full_batch.set()
        return ticket

    async def submit(self, item: T, *, timeout_s: float | None = None) -> R:
        """Run one item through a batch and return its result (raises its own error, TimeoutError, ...)."""
        ticket = self.enqueue(item)
        return await self.wait(ticket, timeout_s=timeout_s)

    async def wait(self, ticket: Ticket[R], *, timeout_s: float | None = None) -> R:
        """Await a ticket's result with the per-request timeout; cancels the ticket on timeout/cancel."""
        return await self._await(ticket, ticket.result, timeout_s)

    async def wait_started(self, ticket: Ticket[R], *, timeout_s: float | None = None) -> int:
        """Await the start of the ticket's batch (returns the batch size); same timeout rules as :meth:`wait`."""
        return await self._await(ticket, ticket.started, timeout_s)

    async def _await(self, ticket: Ticket[R], fut: asyncio.Future[Any], timeout_s: float | None) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if timeout is not None and timeout <= 0:
            ticket.cancel()
            raise TimeoutError(f"request timed out in {self.name}")
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            ticket.cancel()
            raise TimeoutError(f"request timed out after {timeout:g} s in {self.name}") from None
        except asyncio.CancelledError:
            ticket.cancel()
            task = asyncio.current_task()
            if fut.cancelled() and task is not None and not task.cancelling():
                raise BatcherClosed(f"{self.name} dropped this request while shutting down") from None
            raise

    # -- worker ----------------------------------------------------------------------------------------
    async def _next_batch(self) -> tuple[list[Ticket[R]], bool]:
        """Collect up to max_batch_size live tickets; returns (batch, stop_seen)."""
        assert self._queue is not None
        if self._held is not None:
            held, self._held = self._held, None
            if not held.abandoned:
                return [held], False
            self.stats.skipped_items += 1
        batch: list[Ticket[R]] = []
        deadline: float | None = None
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                # queued items are taken without yielding to the event loop, so the next batch starts as soon
                # as the previous one returns, not after every ready HTTP handler has run
                entry = self._queue.get_nowait()
            elif deadline is None:
                entry = await self._queue.get()
            else:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if entry is _STOP:
                return batch, True
            self._inflight -= 1
            if entry.abandoned:
                self.stats.skipped_items += 1
                continue
            if self.solo is not None and self.solo(entry.item):
                if batch:  # it runs next, alone
                    self._held = entry
                    break
                return [entry], False
            batch.append(entry)
            if deadline is None:
                # counted from when the oldest item was accepted: an item that already waited (e.g. behind
                # the previous batch) does not wait another max_wait_ms for company
                deadline = entry.enqueued_at + self.max_wait_s
        return batch, False

    async def _run(self) -> None:
        running: set[asyncio.Future[Any]] = set()
        stop = False
        while not stop:
            await self._wait_for_engine(running)
            batch, stop = await self._next_batch()
            if batch:
                running.add(asyncio.ensure_future(self._execute(batch)))
        if running:  # the stop marker is last in the queue: only batches already handed over remain
            await asyncio.wait(running)

    async def _wait_for_engine(self, running: set[asyncio.Future[Any]]) -> None:
        """Return when the next batch may be gathered: no batch is running, or (pipelining) a slot is free
        and a full batch is already queued."""
        while running:
            slot_free = len(running) < self.max_inflight
            if slot_free and self._queue.qsize() >= self.max_batch_size:
                return
            waits = set(running)
            if slot_free:  # only then can a full batch end the wait early
                self._full_batch.clear()
                waits.add(asyncio.ensure_future(self._full_batch.wait()))
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending - running:
                fut.cancel()
            running -= done

    async def _execute(self, batch: list[Ticket[R]]) -> None:
        loop = asyncio.get_running_loop()
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.batch_sizes.append(len(batch))
        self.stats.max_batch_size_seen = max(self.stats.max_batch_size_seen, len(batch))
        if self.on_batch is not None:
            with contextlib.suppress(Exception):  # metrics must never break serving
                self.on_batch(len(batch), self.queue_depth)
        for t in batch:
            if not t.started.done():
                t.started.set_result(len(batch))
        items = [t.item for t in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._call, items)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            self.stats.retried_batches += 1
            for t in batch:  # isolation: one bad item fails only its own caller
                if t.abandoned:
                    continue
                try:
                    (result,) = await loop.run_in_executor(self._executor, self._call, [t.item])
                except Exception as item_exc:
                    self._fail(t, item_exc)
                else:
                    if not t.result.done():
                        t.result.set_result(result)
            return
        for t, result in zip(batch, results, strict=True):
            if not t.result.done():
                t.result.set_result(result)

    def _call(self, items: list[T]) -> list[R]:
        results = list(self.batch_fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    def _fail(self, ticket: Ticket[R], exc: BaseException) -> None:
        self.stats.failed_items += 1
        if not ticket.result.done():
            ticket.result.set_exception(exc)
