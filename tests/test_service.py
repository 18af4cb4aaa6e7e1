"""OCRService: loading errors, warm-up, guard + retries, batching across concurrent callers."""

from __future__ import annotations

import asyncio

import pytest

from deepsynth.inference.batcher import QueueFull
from deepsynth.inference.service import ModelLoadError, OCRService, load_model
from deepsynth.models.generation import GenerationConfig
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, LoopingEngine, colour_image


def obs(model_id: str = "test") -> Observability:
    return Observability(model_id)


def test_hub_id_without_family_and_missing_path_fail_clearly():
    with pytest.raises(ModelLoadError, match="FAMILY:deepseek-ai/DeepSeek-OCR-2"):
        load_model("deepseek-ai/DeepSeek-OCR-2")
    with pytest.raises(ModelLoadError, match="unknown engine 'nosuchfamily'"):
        load_model("nosuchfamily:x")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("runs/definitely/missing")


def test_direct_recognize_and_warmup():
    engine = ColourEngine()
    service = OCRService(engine, obs=obs())
    assert service.model_id == "colour"
    assert service.warmup() >= 0 and service.warmed_up
    preds = service.recognize([colour_image((16, 32, 48)), colour_image((0, 0, 255))])
    assert [p.text for p in preds] == ["#102030", "#0000ff"]
    assert preds[0].meta["repetition"] is False and preds[0].meta["truncated"] is False


def test_looping_output_is_retried_olmocr_style_and_fixed():
    engine = LoopingEngine()
    service = OCRService(engine, obs=obs(), generation=GenerationConfig(retry_truncated=2))
    (pred,) = service.recognize([colour_image((1, 2, 3))])
    assert pred.text == "Total due: 42 EUR"
    assert pred.finished is True and pred.meta["retries"] == 1
    retry_gen = engine.calls[1]
    assert retry_gen.do_sample and retry_gen.temperature == pytest.approx(0.1)
    assert retry_gen.no_repeat_ngram_size == 8  # repetition made the retry forbid repeated n-grams


def test_without_retries_the_guard_flags_and_trims_the_loop():
    engine = LoopingEngine()
    service = OCRService(engine, obs=obs(), generation=GenerationConfig(retry_truncated=0))
    (pred,) = service.recognize([colour_image((1, 2, 3))])
    assert len(engine.calls) == 1
    assert pred.meta == {"truncated": True, "repetition": True, "repetition_trimmed": True}
    assert pred.text == "Total due: 42 EUR"
    untrimmed = OCRService(LoopingEngine(), obs=obs(), trim_repetition=False).recognize(
        [colour_image((1, 2, 3))]
    )
    assert untrimmed[0].text.count("42 EUR") == 40


def test_concurrent_requests_are_batched_and_answered_in_order():
    engine = ColourEngine(delay=0.05)
    o = obs()
    service = OCRService(engine, obs=o, max_batch_size=8, max_wait_ms=30)

    async def main():
        await service.start()
        colours = [(i, 2 * i, 3 * i) for i in range(24)]
        results = await asyncio.gather(*(service.recognize_async([colour_image(c)]) for c in colours))
        await service.aclose()
        return colours, results

    colours, results = asyncio.run(main())
    assert [r[0].text for r in results] == [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colours]
    assert max(engine.batch_sizes[1:]) > 1  # [0] is the warm-up call
    body, _ = o.exposition()
    assert b"deepsynth_batch_size_count" in body


def test_mixed_generation_settings_share_a_batch_but_not_an_engine_call():
    engine = ColourEngine(delay=0.02)
    service = OCRService(engine, obs=obs(), max_batch_size=8, max_wait_ms=50)
    g1, g2 = (
        service.resolve_generation({"max_new_tokens": 10}),
        service.resolve_generation({"max_new_tokens": 20}),
    )

    async def main():
        await service.start(warmup=False)
        out = await asyncio.gather(
            service.recognize_async([colour_image((1, 1, 1))], g1),
            service.recognize_async([colour_image((2, 2, 2))], g2),
            service.recognize_async([colour_image((3, 3, 3))], g1),
        )
        await service.aclose()
        return out

    out = asyncio.run(main())
    assert [o[0].text for o in out] == ["#010101", "#020202", "#030303"]
    assert sorted(g.max_new_tokens for g in engine.generations) == [10, 20]
    with pytest.raises(ValueError, match="unknown generation setting"):
        service.resolve_generation({"max_new_tokenz": 3})


def test_multi_image_request_larger_than_free_queue_is_rejected_whole():
    service = OCRService(ColourEngine(), obs=obs(), max_queue=2)

    async def main():
        await service.start(warmup=False)
        with pytest.raises(QueueFull, match="room for 2 images, request has 3"):
            await service.recognize_async([colour_image((1, 1, 1))] * 3)
        ok = await service.recognize_async([colour_image((1, 1, 1))] * 2)
        await service.aclose()
        return ok

    assert len(asyncio.run(main())) == 2


@pytest.mark.slow
def test_hub_id_fails_offline_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match=r"(?s)HF_HUB_OFFLINE is set.*hf download deepseek-ai/DeepSeek-OCR-2"
    ):
        load_model("deepseek_ocr2:deepseek-ai/DeepSeek-OCR-2")


def test_real_rapidocr_through_the_service_matches_the_engine(shared_data):
    from tests.serving_engines import fondue_lines

    lines = [img for img, _ in fondue_lines(shared_data, 3)]
    service = OCRService("rapidocr", obs=obs("rapidocr"))
    assert service.model_id == "rapidocr"

    async def main():
        await service.start()
        out = await asyncio.gather(*(service.recognize_async([img]) for img in lines))
        await service.aclose()
        return [o[0].text for o in out]

    assert asyncio.run(main()) == [p.text for p in service.engine.recognize(lines)]


def test_guard_leaves_non_generative_outputs_alone():
    class Leaders:
        name = "leaders"

        def recognize(self, images, generation=None):
            from deepsynth.models.base import Prediction

            return [Prediction(text="Contents " + ". " * 40 + "12", finished=None) for _ in images]

    (pred,) = OCRService(Leaders(), obs=obs()).recognize([colour_image((0, 0, 0))])
    assert pred.text.count(".") == 40 and pred.meta["repetition"] is False


def test_an_in_process_engine_is_served_through_the_serving_engine_protocol():
    """A plain OCREngine is wrapped (alive, not pipelined, no process of its own); an owned one is closed
    with the service, once."""
    from deepsynth.inference.engine import InProcessEngine, ServingEngine

    class Closable(ColourEngine):
        closed = 0

        def close(self) -> None:
            self.closed += 1

    engine = Closable()
    service = OCRService(engine, obs=obs(), owns_engine=True)
    assert isinstance(service.engine, InProcessEngine) and isinstance(service.engine, ServingEngine)
    assert service.engine.alive and not service.engine.pipelined and service.engine.pid is None
    assert service.batcher.max_inflight == 1 and service.model_id == "colour"
    assert service.engine.gpu_memory() == []

    async def main():
        await service.start(warmup=False)
        assert service.ready
        await service.aclose()
        await service.aclose()

    asyncio.run(main())
    assert engine.closed == 1
    not_owned = Closable()
    asyncio.run(OCRService(not_owned, obs=obs()).aclose())
    assert not_owned.closed == 0
    wrapped = InProcessEngine(ColourEngine())
    assert OCRService(wrapped, obs=obs()).engine is wrapped  # a ServingEngine is used as it is
