"""What the OCR and the OpenAI-compatible routers both do around the model call."""

from __future__ import annotations

from typing import Any

from deepsynth.inference.api.bodies import FileItem
from deepsynth.inference.inputs import InputError, PageInput
from deepsynth.inference.service import OCRService
from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig
from deepsynth.observability.core import Observability, RequestContext
from deepsynth.observability.feedback import FeedbackStore


def resolve_generation(service: OCRService, overrides: dict[str, Any]) -> GenerationConfig:
    try:
        return service.resolve_generation(overrides)
    except (TypeError, ValueError) as exc:
        raise InputError(400, "invalid_generation", str(exc), "generation") from exc


def record(
    obs: Observability,
    ctx: RequestContext,
    pages: list[PageInput],
    preds: list[Prediction],
    model_id: str,
    doc_type: str | None = None,
) -> None:
    """Count pages, lines, tokens, guard flags, empty outputs and confidence (per ``doc_type``); offer each
    page to the sample store."""
    for page, pred in zip(pages, preds, strict=True):
        obs.record_result(
            pages=1,
            lines=len(pred.lines) or (1 if pred.text else 0),
            tokens=pred.num_tokens or 0,
            repetition=bool(pred.meta.get("repetition")),
            truncated=bool(pred.meta.get("truncated")),
            empty=not pred.text.strip(),
            confidence=pred.confidence if isinstance(pred.confidence, int | float) else None,
            doc_type=doc_type,
        )
        obs.maybe_store_sample(ctx.request_id, page.image, pred.text, dict(ctx.timings), model_id)


def keep_for_feedback(
    store: FeedbackStore | None,
    ctx: RequestContext,
    files: list[FileItem],
    pages: list[PageInput],
    model_id: str,
    doc_type: str | None = None,
    dpi: float | None = None,
) -> None:
    """With feedback on, keep the request's files so ``POST /v1/feedback`` can name its id (written on the
    store's thread). A page is kept as (its file's index, its page in that file): pages come file by file."""
    if store is None:
        return
    where, file_index = [], -1
    for page in pages:
        file_index += page.page == 1
        where.append((file_index, page.page))
    store.keep_input(ctx.request_id, files, where, model=model_id, doc_type=doc_type, dpi=dpi)


def timings(ctx: RequestContext) -> dict[str, float]:
    out = {f"{k}_ms": v for k, v in ctx.timings_ms().items()}
    out["total_ms"] = round(ctx.elapsed() * 1000.0, 3)
    return out
