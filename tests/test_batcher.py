"""AsyncBatcher with real callables: batching, order, isolation, backpressure, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deepsynth.inference.batcher import AsyncBatcher, BatcherClosed, QueueFull


def run(coro):
    return asyncio.run(coro)


class SlowSquare:
    """Squares numbers; sleeps per batch (like a model) and remembers the batches and threads it saw."""

    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if any(x < 0 for x in items):
            raise ValueError(f"negative input in {items}")
        return [x * x for x in items]


def test_concurrent_calls_form_batches_and_results_return_to_their_callers():
    fn = SlowSquare()

    async def main():
        async with AsyncBatcher(fn, max_batch_size=8, max_wait_ms=50) as b:
            results = await asyncio.gather(*(b.submit(i) for i in range(20)))
            return results, b.stats

    results, stats = run(main())
    assert results == [i * i for i in range(20)]
    assert stats.items == 20
    assert stats.max_batch_size_seen == 8
    assert stats.batches <= 4
    assert all(len(b) <= 8 for b in fn.batches)
    assert sorted(x for b in fn.batches for x in b) == list(range(20))
    # the model runs on the batcher's worker thread, never on the event loop thread
    assert fn.threads and all(name.startswith("batcher") for name in fn.threads)


def test_event_loop_stays_responsive_while_a_batch_runs():
    fn = SlowSquare(delay=0.3)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=4, max_wait_ms=1) as b:
            task = asyncio.create_task(b.submit(3))
            ticks = 0
            t0 = time.perf_counter()
            while not task.done():
                await asyncio.sleep(0.01)
                ticks += 1
            return await task, ticks, time.perf_counter() - t0

    result, ticks, elapsed = run(main())
    assert result == 9
    assert elapsed >= 0.25
    assert ticks >= 10  # the loop kept running during the 0.3 s blocking call


def test_max_wait_flushes_a_partial_batch():
    fn = SlowSquare(delay=0.0)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=64, max_wait_ms=20) as b:
            t0 = time.perf_counter()
            out = await asyncio.gather(b.submit(2), b.submit(3))
            return out, time.perf_counter() - t0

    out, elapsed = run(main())
    assert out == [4, 9]
    assert fn.batches == [[2, 3]]
    assert elapsed < 1.0


def test_item_that_waited_behind_a_batch_does_not_wait_max_wait_again():
    fn = SlowSquare(delay=0.4)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=8, max_wait_ms=300) as b:
            first = asyncio.create_task(b.submit(2))  # alone: flushed after 0.3 s, runs until ~0.7 s
            await asyncio.sleep(0.35)
            ticket = b.enqueue(3)  # accepted while the first batch runs; its 0.3 s are up at ~0.65 s
            first_result = await first
            first_done = time.perf_counter()
            await b.wait_started(ticket)
            gap = time.perf_counter() - first_done
            return first_result, await b.wait(ticket), gap

    first, second, gap = run(main())
    assert (first, second) == (4, 9)
    assert fn.batches == [[2], [3]]
    # it starts as soon as the model is free; waiting max_wait again after the first batch would take 0.3 s
    assert gap < 0.15


def test_one_bad_item_fails_only_its_own_request():
    fn = SlowSquare(delay=0.01)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=8, max_wait_ms=50) as b:
            return await asyncio.gather(
                *(b.submit(x) for x in [1, 2, -3, 4]), return_exceptions=True
            ), b.stats

    out, stats = run(main())
    assert out[:2] == [1, 4] and out[3] == 16
    assert isinstance(out[2], ValueError) and "-3" in str(out[2])
    assert stats.retried_batches == 1 and stats.failed_items == 1
    assert [-3] in fn.batches  # the bad item was retried alone


def test_full_queue_raises_queuefull_and_accepted_work_is_answered():
    fn = SlowSquare(delay=0.1)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=2, max_wait_ms=0, max_queue=4) as b:
            accepted, rejected = [], 0
            for i in range(12):
                try:
                    accepted.append((i, b.enqueue(i)))
                except QueueFull as exc:
                    assert "queue is full" in str(exc)
                    rejected += 1
            results = [(i, await b.wait(t)) for i, t in accepted]
            return results, rejected

    results, rejected = run(main())
    assert rejected >= 6
    assert len(results) + rejected == 12
    assert all(r == i * i for i, r in results)


def test_timeout_cancels_a_waiting_item_and_it_never_runs():
    fn = SlowSquare(delay=0.3)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=1, max_wait_ms=0) as b:
            first = asyncio.create_task(b.submit(1))
            await asyncio.sleep(0.02)  # item 1 is now running
            with pytest.raises(TimeoutError, match="timed out"):
                await b.submit(2, timeout_s=0.05)
            assert await first == 1
            return b.stats

    stats = run(main())
    assert [2] not in fn.batches
    assert stats.skipped_items == 1


def test_cancelled_caller_is_skipped():
    fn = SlowSquare(delay=0.2)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=1, max_wait_ms=0) as b:
            first = asyncio.create_task(b.submit(1))
            await asyncio.sleep(0.02)
            second = asyncio.create_task(b.submit(2))
            await asyncio.sleep(0.02)
            second.cancel()
            third = await b.submit(3)
            with pytest.raises(asyncio.CancelledError):
                await second
            return await first, third

    assert run(main()) == (1, 9)
    assert [2] not in fn.batches


def test_graceful_shutdown_drains_accepted_work_and_refuses_new():
    fn = SlowSquare(delay=0.05)

    async def main():
        b = AsyncBatcher(fn, max_batch_size=2, max_wait_ms=0)
        await b.start()
        tickets = [b.enqueue(i) for i in range(6)]
        await b.close(drain=True)
        with pytest.raises(BatcherClosed):
            b.enqueue(99)
        return [t.result.result() for t in tickets]

    assert run(main()) == [i * i for i in range(6)]


def test_drain_that_runs_out_of_time_fails_what_is_left_with_shutting_down():
    """The running batch and the queued items both get ShuttingDown at the drain deadline (the server answers
    503 shutting_down), new work is refused the same way, and finished work keeps its result."""
    from deepsynth.inference.batcher import ShuttingDown

    fn = SlowSquare(delay=0.4)

    async def main():
        b = AsyncBatcher(fn, max_batch_size=1, max_wait_ms=0)
        await b.start()
        done = await b.submit(3)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await b.close(drain=True, timeout_s=0.2)
        took = time.perf_counter() - t0
        with pytest.raises(ShuttingDown):
            b.enqueue(99)
        return done, took, await asyncio.gather(*tasks, return_exceptions=True)

    done, took, out = run(main())
    assert done == 9 and took < 0.35
    assert all(isinstance(x, ShuttingDown) and "drain" in str(x) for x in out), out


def test_shutdown_without_drain_rejects_waiting_callers_clearly():
    fn = SlowSquare(delay=0.2)

    async def main():
        b = AsyncBatcher(fn, max_batch_size=1, max_wait_ms=0)
        await b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(4)]
        await asyncio.sleep(0.05)
        await b.close(drain=False)
        return await asyncio.gather(*tasks, return_exceptions=True)

    out = run(main())
    assert out[0] == 0
    assert all(isinstance(x, BatcherClosed) for x in out[1:])


def test_on_batch_hook_sees_sizes_and_a_broken_hook_does_not_break_serving():
    seen: list[tuple[int, int]] = []

    def hook(size: int, depth: int) -> None:
        seen.append((size, depth))
        raise RuntimeError("metrics backend down")

    async def main():
        async with AsyncBatcher(SlowSquare(0.01), max_batch_size=4, max_wait_ms=30, on_batch=hook) as b:
            return await asyncio.gather(*(b.submit(i) for i in range(8)))

    assert run(main()) == [i * i for i in range(8)]
    assert sum(s for s, _ in seen) == 8 and max(s for s, _ in seen) == 4


def test_wrong_result_count_is_an_error_for_the_callers():
    async def main():
        async with AsyncBatcher(lambda items: items[:1], max_batch_size=4, max_wait_ms=30) as b:
            return await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)

    out = run(main())
    # retried alone each item works (a 1-item batch returns 1 result)
    assert out == [1, 2]


class Overlap(SlowSquare):
    """SlowSquare that also records how many batches ran at the same time."""

    def __init__(self, delay: float = 0.05):
        super().__init__(delay)
        self.lock = threading.Lock()
        self.active = self.max_active = 0

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return super().__call__(items)
        finally:
            with self.lock:
                self.active -= 1


def test_pipelined_batcher_hands_over_full_batches_early_and_keeps_order():
    fn = Overlap(delay=0.05)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=4, max_wait_ms=20, max_inflight=2) as b:
            return await asyncio.gather(*(b.submit(i) for i in range(16)))

    assert run(main()) == [i * i for i in range(16)]
    assert fn.max_active == 2  # a full batch was handed over while the previous one ran
    assert [len(x) for x in fn.batches] == [4, 4, 4, 4]


def test_pipelined_batcher_holds_a_partial_batch_until_the_engine_is_free():
    fn = Overlap(delay=0.15)

    async def main():
        async with AsyncBatcher(fn, max_batch_size=8, max_wait_ms=5, max_inflight=2) as b:
            first = asyncio.ensure_future(b.submit(1))
            await asyncio.sleep(0.03)  # batch [1] is running
            rest = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
            await asyncio.sleep(0.03)
            rest += [asyncio.ensure_future(b.submit(i)) for i in (4, 5)]
            return await asyncio.gather(first, *rest)

    assert run(main()) == [1, 4, 9, 16, 25]
    assert fn.max_active == 1  # partial batches never overlap: they wait and fill up instead
    assert fn.batches == [[1], [2, 3, 4, 5]]
