"""OCRService: one model, loaded once, warmed up, read through a guard, batched across concurrent callers.

The service is the library; the HTTP server, the batch CLI and the web demo are thin callers of it.

    service = OCRService("rapidocr", max_batch_size=8, max_wait_ms=10)
    preds = service.recognize([image])                  # direct, blocking (offline batches)
    await service.start(); preds = await service.recognize_async([image])   # batched across callers

    async for i, event in service.stream_async([image]):   # text pieces as generated, then the Prediction

Preprocessing is the engine's own (the same function the trainer used); the service never resizes or
normalises images itself. Generative outputs pass through a repetition guard and, when
``GenerationConfig.retry_truncated`` > 0, an olmOCR-style retry (see :mod:`deepsynth.inference.guard`).
For a LoRA base, :meth:`OCRService.adapter_view` gives each adapter a service with its own name and metrics
that shares the base's queue and engine, so one batch mixes adapters.
A streamed answer has been sent before it ends, so it is neither retried nor trimmed (its ``repetition`` and
``truncated`` flags are still set).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from deepsynth.inference.batcher import AsyncBatcher, QueueFull, Ticket
from deepsynth.inference.engine import Adapters, ServingEngine, as_serving_engine
from deepsynth.inference.guard import retry_generation
from deepsynth.inference.limits import InputGeometry, engine_geometry
from deepsynth.models.base import OCREngine, Prediction
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.registry import ModelLoadError, load_engine
from deepsynth.models.repetition import find_repetition, trim_tail_loop

if TYPE_CHECKING:
    from deepsynth.observability import Observability

log = logging.getLogger("deepsynth.inference")


def load_model(spec: str, **kwargs: Any) -> OCREngine:
    """:func:`~deepsynth.models.registry.load_engine` (the one loader, with its friendly errors) where every
    failure is a :class:`ModelLoadError`, the one type the server, the CLIs and the web demo report."""
    try:
        return load_engine(spec, **kwargs)
    except ModelLoadError:
        raise
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:
        raise ModelLoadError(f"could not load model {spec!r}: {type(exc).__name__}: {exc}") from exc


class TextStream:
    """The pieces of one streamed answer, handed from the model's thread to the event loop, in order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()  # None: the answer is done
        self.sent = ""
        self._stopped = threading.Event()

    def put(self, piece: str) -> None:
        """Queue a piece (called from the model's thread; dropped once the reader has gone)."""
        if not piece or self._stopped.is_set():
            return
        self.sent += piece
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self.pieces.put_nowait, piece)

    def finish(self, text: str) -> None:
        """Queue what the engine did not stream of its final ``text`` (all of it for a CTC engine)."""
        if text.startswith(self.sent):
            self.put(text[len(self.sent) :])
        else:  # the pieces are a prefix by construction (PieceStreamer); say so if that ever breaks
            log.warning("streamed text is not a prefix of the answer", extra={"sent": len(self.sent)})

    async def next_piece(self, timeout_s: float | None) -> str | None:
        """The pieces queued since the last call, joined (a reader slower than the model gets fewer, larger
        chunks); None once the answer is done."""
        piece = await asyncio.wait_for(self.pieces.get(), timeout_s)
        while piece is not None and not self.pieces.empty():
            more = self.pieces.get_nowait()
            if more is None:  # the end: hand it out on the next call
                self.pieces.put_nowait(None)
                break
            piece += more
        return piece

    def stop(self) -> None:
        """The reader has gone: end the generation (polled by the engine) and drop further pieces."""
        self._stopped.set()

    def stopped(self) -> bool:
        return self._stopped.is_set()


# one image, its settings, its LoRA adapter, and the TextStream of a streamed answer
BatchItem = tuple[Image.Image, GenerationConfig, str | None, TextStream | None]


def _default_obs(model_id: str) -> Observability:
    from deepsynth.observability import Observability

    return Observability.from_env(model_id=model_id)


def _generation_key(gen: GenerationConfig) -> tuple:
    return tuple(sorted(dataclasses.asdict(gen).items()))


def warmup_image() -> Image.Image:
    """A small line image with dark text on white (exercises preprocessing and the model once)."""
    img = Image.new("RGB", (320, 48), "white")
    ImageDraw.Draw(img).text((8, 16), "DeepSynth warm-up 0123", fill="black")
    return img


class OCRService:
    """One engine + an :class:`AsyncBatcher` + the output guard + observability hooks.

    ``owns_engine`` (default: True when the service loaded the engine from a spec) makes :meth:`aclose`
    close the engine too, e.g. stop a :class:`~deepsynth.inference.model_process.ProcessEngine`.
    """

    def __init__(
        self,
        engine: OCREngine | ServingEngine | str,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        timeout_s: float | None = 300.0,
        generation: GenerationConfig | None = None,
        trim_repetition: bool = True,
        model_id: str | None = None,
        obs: Observability | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        owns_engine: bool | None = None,
        geometry: InputGeometry | None = None,
    ):
        self.owns_engine = isinstance(engine, str) if owns_engine is None else owns_engine
        spec = None
        if isinstance(engine, str):
            spec = engine
            engine = load_model(spec, **(engine_kwargs or {}))
            model_id = model_id or spec
        self.engine: ServingEngine = as_serving_engine(engine)
        self.model_id = model_id or self.engine.name
        # how the engine resizes pages (for the model-pixel budget); from the spec unless given
        self.geometry = geometry or engine_geometry(spec or self.model_id)
        self.generation = generation or GenerationConfig()
        self.trim_repetition = trim_repetition
        self.timeout_s = timeout_s
        obs = obs if obs is not None else _default_obs(self.model_id)
        self.obs = obs
        if self.engine.pid is not None:  # the model has its own process: export its CPU, memory and GPU
            obs.watch_model_process(lambda: self.engine.pid, self.engine.gpu_memory)
        self.batcher: AsyncBatcher[BatchItem, Prediction] = AsyncBatcher(
            self._run_batch,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            timeout_s=timeout_s,
            on_batch=obs.record_batch,
            name="ocr-batcher",
            # an engine that queues work itself (a model in its own process) gets the next full batch early
            max_inflight=2 if self.engine.pipelined else 1,
            solo=lambda item: item[3] is not None,  # a streamed answer runs alone (the streamer's batch is 1)
        )
        self.warmed_up = False
        self.warmup_seconds: float | None = None
        self._closing: asyncio.Future[None] | None = None
        self.adapter: str | None = None  # set on an adapter view: the LoRA adapter its requests name
        self.base: OCRService | None = None  # set on an adapter view: the service whose queue it shares

    def adapter_view(self, adapter: str, *, obs: Observability | None = None) -> OCRService:
        """A service for LoRA adapter ``adapter`` of this (base) service's engine: its own ``model_id`` and
        metrics, this service's queue, batcher and engine (a batch mixes adapters). Closing it closes
        only its metrics; the engine must already know the adapter (``engine.add_adapter``)."""
        view = copy.copy(self)
        view.model_id, view.adapter, view.base, view.owns_engine = adapter, adapter, self, False
        view.obs = obs if obs is not None else _default_obs(adapter)
        view._closing = None
        return view

    # -- lifecycle -------------------------------------------------------------------------------------
    def warmup(self) -> float:
        """Run the engine once on a small image (first-call costs: lazy init, kernels); returns seconds."""
        t0 = time.perf_counter()
        self.engine.recognize([warmup_image()], self.generation)
        self.warmup_seconds = time.perf_counter() - t0
        self.warmed_up = True
        log.info("model warmed up", extra={"model": self.model_id, "seconds": round(self.warmup_seconds, 3)})
        return self.warmup_seconds

    async def start(self, *, warmup: bool = True) -> None:
        """Start batching on the running loop; warm the model up in a thread first (when asked). An
        adapter view waits for nothing: its base starts the shared batcher."""
        if self.base is not None:
            return
        if warmup and not self.warmed_up:
            await asyncio.to_thread(self.warmup)
        await self.batcher.start()

    async def aclose(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop accepting work, finish (or drop) what was accepted — for at most ``timeout_s``, then the
        rest fails with ``ShuttingDown`` — stop the engine (a model process for sure), flush observability.
        Idempotent: a second call waits for the first."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._aclose(drain, timeout_s))
        await asyncio.shield(self._closing)

    async def _aclose(self, drain: bool, timeout_s: float | None) -> None:
        if self.base is not None:  # the queue and the engine are the base's
            self.obs.close()
            return
        try:
            await self.batcher.close(drain=drain, timeout_s=timeout_s)
        finally:
            if self.owns_engine:
                await asyncio.to_thread(self.engine.close)
            self.obs.close()

    @property
    def closing(self) -> bool:
        """:meth:`aclose` has been called (the engine is stopped on purpose)."""
        return self._closing is not None

    @property
    def ready(self) -> bool:
        """Batching runs and the engine is usable (a :class:`ProcessEngine` whose child died is not)."""
        return self.batcher.running and self.engine.alive

    @property
    def not_ready_reason(self) -> str:
        """Why :attr:`ready` is False, in words for ``/readyz`` and 503 answers."""
        if not self.engine.alive:
            return "the model process has exited (see the server log); restart the server"
        if not self.batcher.running:
            return "the model is loading / warming up"
        return ""

    def resolve_generation(self, overrides: dict[str, Any] | None = None) -> GenerationConfig:
        """The service's default generation settings with per-request overrides (unknown keys rejected)."""
        if not overrides:
            return self.generation
        known = {f.name for f in dataclasses.fields(GenerationConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown generation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self.generation, **overrides)

    # -- direct (blocking) path ------------------------------------------------------------------------
    def recognize(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        adapters: Adapters = None,
    ) -> list[Prediction]:
        """Read a batch directly (no queue): engine + repetition guard + retries. Blocking. ``adapters``:
        each image's LoRA adapter (default: this service's own, none for a base)."""
        gen = generation or self.generation
        if adapters is None and self.adapter is not None:
            adapters = [self.adapter] * len(images)
        # the service owns retries (one policy for every engine): the engine itself must not retry again
        engine_gen = dataclasses.replace(gen, retry_truncated=0) if gen.retry_truncated else gen
        preds = list(self._engine_call(list(images), engine_gen, adapters))
        if len(preds) != len(images):
            raise RuntimeError(f"{self.model_id} returned {len(preds)} predictions for {len(images)} images")
        return self._guard(list(images), preds, gen, adapters)

    def _engine_call(
        self, images: list[Image.Image], gen: GenerationConfig, adapters: Adapters
    ) -> list[Prediction]:
        if adapters is None or all(a is None for a in adapters):  # engines without adapters never see them
            return self.engine.recognize(images, gen)
        return self.engine.recognize(images, gen, adapters)

    def _guard(
        self,
        images: list[Image.Image],
        preds: list[Prediction],
        gen: GenerationConfig,
        adapters: Adapters = None,
        *,
        trim: bool = True,
    ) -> list[Prediction]:
        flags = [self._flags(p, gen) for p in preds]
        for attempt in range(1, max(0, gen.retry_truncated) + 1):
            todo = [i for i, (trunc, rep) in enumerate(flags) if trunc or rep]
            if not todo:
                break
            # group by what went wrong so each retry batch shares one generation config
            for rep_flag in (False, True):
                idx = [i for i in todo if flags[i][1] == rep_flag]
                if not idx:
                    continue
                retry_gen = dataclasses.replace(
                    retry_generation(gen, attempt, repetition=rep_flag), retry_truncated=0
                )
                retried = self._engine_call(
                    [images[i] for i in idx],
                    retry_gen,
                    None if adapters is None else [adapters[i] for i in idx],
                )
                for i, new in zip(idx, retried, strict=True):
                    new.meta["retries"] = attempt
                    new_flags = self._flags(new, gen)
                    if sum(new_flags) <= sum(flags[i]):
                        preds[i], flags[i] = new, new_flags
                    else:
                        preds[i].meta["retries"] = attempt
        for p, (trunc, rep) in zip(preds, flags, strict=True):
            p.meta["truncated"] = trunc
            p.meta["repetition"] = rep
            if rep and self.trim_repetition and trim:
                p.text, trimmed = trim_tail_loop(p.text, gen.repetition_threshold)
                p.meta["repetition_trimmed"] = trimmed
        return preds

    @staticmethod
    def _flags(pred: Prediction, gen: GenerationConfig) -> tuple[bool, bool]:
        """(truncated, repetition). Only generative outputs are checked (``finished`` is not None): a CTC
        recogniser or a page engine cannot loop, and legitimate repeats ("....", table rows) must stay."""
        if pred.finished is None:
            return False, False
        truncated = pred.finished is False
        repetition = find_repetition(pred.text, gen.repetition_ngram, gen.repetition_threshold)
        return truncated, repetition

    def _run_batch(self, items: list[BatchItem]) -> list[Prediction]:
        """Batch function for the batcher: one engine call per distinct generation config (the LoRA
        adapters of a base's views mix in one call; a streamed item comes alone, see ``solo``)."""
        if len(items) == 1 and items[0][3] is not None:
            return [self._run_stream(*items[0])]
        out: list[Prediction | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (_, gen, _, _) in enumerate(items):
            groups.setdefault(_generation_key(gen), []).append(i)
        for idx in groups.values():
            gen = items[idx[0]][1]
            preds = self.recognize([items[i][0] for i in idx], gen, [items[i][2] for i in idx])
            for i, p in zip(idx, preds, strict=True):
                out[i] = p
        return out  # type: ignore[return-value]

    def _run_stream(
        self, image: Image.Image, gen: GenerationConfig, adapter: str | None, stream: TextStream | None
    ) -> Prediction:
        """One streamed answer: the engine emits pieces while generating; no retry and no trim (what was
        sent stays sent), then the rest of the text."""
        assert stream is not None
        gen = dataclasses.replace(gen, retry_truncated=0)
        pred = self.engine.recognize_stream(image, gen, stream.put, stream.stopped, adapter)
        (pred,) = self._guard([image], [pred], gen, trim=False)
        stream.finish(pred.text)
        return pred

    # -- batched (async) path --------------------------------------------------------------------------
    async def recognize_async(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[Prediction]:
        """Queue each image (they may join other callers' batches) and return predictions in order.

        Raises QueueFull (nothing of this request was queued), BatcherClosed, TimeoutError, or the engine's
        error for an image that failed on its own. Records the ``queue`` and ``model`` stages.
        """
        gen = generation or self.generation
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout is None else time.perf_counter() + timeout
        tickets: list[Ticket[Prediction]] = []
        try:
            if self.batcher.max_queue - self.batcher.queue_depth < len(images):
                raise QueueFull(
                    f"queue has room for {self.batcher.max_queue - self.batcher.queue_depth} images, "
                    f"request has {len(images)}; retry later"
                )
            tickets = [self.batcher.enqueue((img, gen, self.adapter, None)) for img in images]
            with self.obs.stage("queue", images=len(images)):
                for t in tickets:
                    await self.batcher.wait_started(t, timeout_s=_left(deadline))
            with self.obs.stage("model", images=len(images)):
                return [await self.batcher.wait(t, timeout_s=_left(deadline)) for t in tickets]
        except BaseException:
            for t in tickets:
                t.cancel()
            raise

    async def stream_async(
        self,
        images: Sequence[Image.Image],
        generation: GenerationConfig | None = None,
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[tuple[int, str | Prediction]]:
        """Stream each image's answer: yields ``(i, piece)`` while image ``i`` is generated, then
        ``(i, prediction)``, image after image (each image runs alone, all are queued at once). An engine
        that cannot stream yields its whole text as one piece. Raises like :meth:`recognize_async`; leaving
        the loop early stops the generation."""
        gen = generation or self.generation
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout is None else time.perf_counter() + timeout
        if self.batcher.max_queue - self.batcher.queue_depth < len(images):
            raise QueueFull(
                f"queue has room for {self.batcher.max_queue - self.batcher.queue_depth} images, "
                f"request has {len(images)}; retry later"
            )
        streams = [TextStream() for _ in images]
        tickets = [
            self.batcher.enqueue((img, gen, self.adapter, s)) for img, s in zip(images, streams, strict=True)
        ]
        for t, s in zip(tickets, streams, strict=True):  # after the pieces queued before it, on the loop
            t.result.add_done_callback(lambda _, s=s: s.pieces.put_nowait(None))
        try:
            for i, (ticket, stream) in enumerate(zip(tickets, streams, strict=True)):
                while (piece := await stream.next_piece(_left(deadline))) is not None:
                    yield i, piece
                yield i, await self.batcher.wait(ticket, timeout_s=_left(deadline))
        except TimeoutError:
            raise TimeoutError(f"request timed out after {timeout:g} s in {self.batcher.name}") from None
        finally:
            for t, s in zip(tickets, streams, strict=True):
                s.stop()
                t.cancel()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.perf_counter()
