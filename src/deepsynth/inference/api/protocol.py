"""Pydantic models of every request and response body (``extra="forbid"``: an unknown field is a 400).

They validate the bodies (with pydantic's JSON parser, which stops at nesting depth 200 instead of recursing)
and declare them in the OpenAPI schema. Errors are :class:`ErrorResponse` everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Json,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from deepsynth.models.generation import GenerationConfig


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- generation overrides: GenerationConfig's own fields, each optional, with bounds ---------------------------

_GENERATION_BOUNDS: dict[str, dict[str, float]] = {
    "max_new_tokens": {"ge": 1},
    "num_beams": {"ge": 1},
    "temperature": {"ge": 0},
    "top_p": {"ge": 0, "le": 1},
    "top_k": {"ge": 0},
    "repetition_penalty": {"gt": 0},
    "no_repeat_ngram_size": {"ge": 0},
    "base_size": {"ge": 1},
    "image_size": {"ge": 1},
    "retry_truncated": {"ge": 0, "le": 5},
    "repetition_ngram": {"ge": 1},
    "repetition_threshold": {"ge": 1},
}


_NOT_OVERRIDES = {"top_logprobs"}  # asked for through the chat API's logprobs / top_logprobs


def _generation_model() -> type[StrictModel]:
    hints = get_type_hints(GenerationConfig)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(None, **_GENERATION_BOUNDS.get(f.name, {})))
        for f in dataclasses.fields(GenerationConfig)
        if f.name not in _NOT_OVERRIDES
    }
    return create_model(
        "GenerationOverrides",
        __base__=StrictModel,
        __doc__="Per-request decoding settings; fields left out keep the server's defaults.",
        **fields,
    )


GenerationOverrides = _generation_model()


def overrides(gen: BaseModel | None) -> dict[str, Any]:
    """The fields a request set (``resolve_generation`` applies them to the server's defaults)."""
    return {} if gen is None else gen.model_dump(exclude_unset=True)


# -- DeepSynth OCR ---------------------------------------------------------------------------------------------

Dpi = Annotated[float, Field(ge=36, le=600, description="PDF render resolution for this request")]
DocType = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$",
        description="a label for the kind of document (e.g. invoice); quality metrics are broken down by it",
    ),
]

ModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="the served model to use (GET /v1/models lists them); default: the one routed for "
        "doc_type, else the server's default model",
    ),
]


class ImageItem(StrictModel):
    """A named inline file."""

    name: str | None = None
    data: str = Field(description="base64 or a data: URI (remote URLs are refused)")


# an 8x8 PNG: the schema's request examples (schemathesis and /docs send them)
EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mPUCKhgwAaYGHCAwSkBAMBYAQAS"
    "bbp9AAAAAElFTkSuQmCC"
)


class OCRRequest(StrictModel):
    """``POST /v1/ocr`` as JSON: images or PDFs as base64 / data URIs."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"images": [EXAMPLE_IMAGE], "generation": {"max_new_tokens": 64}}]}
    )

    images: list[Annotated[str | ImageItem, Field(union_mode="left_to_right")]] = Field(min_length=1)
    dpi: Dpi | None = None
    model: ModelName | None = None
    doc_type: DocType | None = None
    generation: GenerationOverrides | None = None  # type: ignore[valid-type]


class OCRForm(StrictModel):
    """``POST /v1/ocr`` as multipart/form-data: every file part is read (``files`` or ``file``, repeatable)."""

    model_config = ConfigDict(strict=False)  # form fields arrive as text ("150")

    files: list[bytes] = Field(min_length=1)
    dpi: Dpi | None = None
    model: ModelName | None = None
    doc_type: DocType | None = None
    generation: Json[GenerationOverrides] | None = None  # type: ignore[valid-type]


FORM_FIELDS = ("dpi", "model", "doc_type", "generation")  # the text fields of OCRForm


class OCRPage(BaseModel):
    source: str
    page: int
    width: int
    height: int
    text: str
    confidence: Any = None
    finished: bool | None = None
    num_tokens: int | None = None
    lines: list[dict[str, Any]] = []
    repetition: bool
    truncated: bool
    retries: int


class OCRResponse(BaseModel):
    id: str
    object: Literal["ocr.result"]
    model: str
    pages: list[OCRPage]
    text: str
    timings: dict[str, float]


# -- OpenAI-compatible chat completions ------------------------------------------------------------------------


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ImageURL(StrictModel):
    url: str = Field(description="a data: URI (remote URLs are refused)")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(StrictModel):
    type: Literal["image_url"]
    image_url: ImageURL | str = Field(union_mode="left_to_right")


def _part_tag(part: Any) -> str | None:
    kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
    return {"text": "text-part", "image_url": "image-part"}.get(kind) if isinstance(kind, str) else None


# the tags (which appear in error locations) must not read as field names, as "image_url" would
ContentPart = Annotated[
    Annotated[TextPart, Tag("text-part")] | Annotated[ImagePart, Tag("image-part")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_content_part",
        custom_error_message="unsupported content part type; expected 'text' or 'image_url'",
    ),
]


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    # left to right: a smart union would validate (and copy) a big data URI once per member it tries
    content: str | list[ContentPart] | None = Field(None, union_mode="left_to_right")
    name: str | None = None


class StreamOptions(StrictModel):
    include_usage: bool | None = None


MetadataValue = Annotated[str, Field(max_length=512)]


class ChatMetadata(StrictModel):
    """OpenAI's ``metadata``: at most 16 string pairs (keys up to 64 characters, values up to 512).
    ``doc_type`` labels the request and routes it as ``doc_type`` does on ``/v1/ocr``; other keys are kept
    by clients and ignored here."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, MetadataValue] = Field(init=False)  # type: ignore[assignment]

    doc_type: DocType | None = None

    @model_validator(mode="after")
    def _openai_bounds(self) -> ChatMetadata:
        keys = [*(self.model_extra or {}), *(["doc_type"] if self.doc_type is not None else [])]
        if len(keys) > 16:
            raise ValueError(f"at most 16 metadata keys, got {len(keys)}")
        if long := next((k for k in keys if len(k) > 64), None):
            raise ValueError(f"metadata key {long[:80]!r} is longer than 64 characters")
        return self


class ChatCompletionRequest(StrictModel):
    """The subset of OpenAI's chat completion request an OCR model can honour; images only as data: URIs."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Free OCR."},
                                {"type": "image_url", "image_url": {"url": EXAMPLE_IMAGE}},
                            ],
                        }
                    ],
                    "max_tokens": 64,
                }
            ]
        }
    )

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Literal[1] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None  # include_usage: a last chunk carries the usage
    metadata: ChatMetadata | None = None  # doc_type labels and routes the request
    # per-token log-probabilities (VLMs, and characters of CTC recognisers); a 400 naming the field where the
    # engine has none (page engines, Tesseract) or no alternatives (top_logprobs > 0 on a CTC recogniser)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # accepted (OpenAI clients send them) and without effect on OCR
    user: str | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(description="the token's text as UTF-8 bytes")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the most likely tokens at this step, best first")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] = Field(
        description="one entry per output token (a CTC recogniser's: per character), images one after the other"
    )


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """Non-streamed answer (``stream: true`` gives ``text/event-stream`` chunks in OpenAI's format)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: dict[str, float]


class RegistrySource(BaseModel):
    """The MLflow Model Registry version a ``models:/NAME@ALIAS`` model serves."""

    name: str = Field(description="the registered model")
    alias: str | None = Field(description="the alias followed (None: a pinned models:/NAME/VERSION)")
    version: str = Field(description="the version served now")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    default: bool = Field(False, description="serves requests that name no model and no routed doc type")
    doc_types: list[str] = Field([], description="document types the routing table sends to this model")
    parent: str | None = Field(None, description="a LoRA adapter's base model (vLLM's field); None otherwise")
    limits: dict[str, Any] = Field(description="the server's resource budgets (ServingLimits)")
    registry: RegistrySource | None = Field(None, description="for a model served from the model registry")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


# -- feedback -------------------------------------------------------------------------------------------------

FEEDBACK_MAX_CHARS = 20_000


class FeedbackRequest(StrictModel):
    """``POST /v1/feedback``: the corrected text of one page, of an earlier request (``request_id``: the server
    kept its input) or of an ``image`` sent along; stored as labelled data of type ``doc_type``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"request_id": "3f2c9a", "page": 1, "text": "Total 12,40 EUR", "doc_type": "receipt"},
                {"image": EXAMPLE_IMAGE, "text": "Total 12,40 EUR", "doc_type": "receipt"},
            ]
        }
    )

    request_id: str | None = Field(
        None,
        min_length=1,
        max_length=80,
        description="the id of a /v1/ocr answer, a chat completion's id (chatcmpl-...) or its X-Request-ID",
    )
    page: int = Field(1, ge=1, le=10_000, description="1-based page of that request (its pages in order)")
    image: str | ImageItem | None = Field(
        None, union_mode="left_to_right", description="instead of request_id: the image or PDF, base64"
    )
    text: str = Field(min_length=1, max_length=FEEDBACK_MAX_CHARS, description="the correct text of the page")
    doc_type: DocType

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the corrected text is blank")
        return text


class FeedbackResponse(BaseModel):
    id: str = Field(description="the stored correction (`deepsynth samples list --feedback` shows it)")
    object: Literal["feedback"]
    request_id: str | None
    page: int
    doc_type: str
    chars: int
    created: str


# -- errors and probes ----------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str = Field(description="stable machine-readable error kind, e.g. invalid_image, queue_full")
    code: int = Field(description="the HTTP status")
    param: str | None = Field(None, description="the request field or file at fault, when there is one")


class ErrorResponse(BaseModel):
    """Every error of the API, in OpenAI's shape."""

    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    model: str | None = Field(None, description="the default model")
    models: list[str] | None = None
    reason: str | None = None


class ModelAction(StrictModel):
    """``POST /admin/models``: load a new model, reload one (from ``spec`` or the spec it was loaded from),
    or unload one. With ``lora``, ``name`` is a LoRA adapter served on the weights of ``base``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"action": "load", "name": "fraktur", "spec": "ppocr"},
                {"action": "load", "name": "invoices", "lora": "runs/invoices/best"},
            ]
        }
    )

    action: Literal["load", "reload", "unload"]
    name: ModelName
    spec: str | None = Field(None, min_length=1, max_length=1000, description="engine spec or model dir")
    lora: str | None = Field(
        None, min_length=1, max_length=1000, description="a saved LoRA adapter directory (instead of 'spec')"
    )
    base: ModelName | None = Field(
        None, description="the served model the adapter runs on (default: the one serving adapters)"
    )


class RegistryFollow(BaseModel):
    """One model served from a registry alias, checked by ``POST /admin/reload``."""

    name: str = Field(description="the served model")
    registered_model: str
    alias: str
    previous_version: str = Field(description="the version served before the check")
    version: str | None = Field(description="the version served now")
    status: Literal["unchanged", "reloaded", "failed"]
    error: str | None = Field(None, description="why the new version is not served (the old one still is)")


class RegistryReloadResult(BaseModel):
    models: list[RegistryFollow] = Field(description="every model served from a registry alias")


class ModelActionResult(BaseModel):
    name: str
    status: Literal["loaded", "reloaded", "unloaded"]
    models: list[str] = Field(description="the models served after the action")


# names a validation error's location may contain (pydantic adds union-member labels, which are dropped)
FIELD_NAMES = frozenset(
    name
    for model in (
        GenerationOverrides,
        ImageItem,
        OCRRequest,
        OCRForm,
        TextPart,
        ImageURL,
        ImagePart,
        ChatMessage,
        StreamOptions,
        ChatMetadata,
        ChatCompletionRequest,
        ModelAction,
        FeedbackRequest,
    )
    for name in model.model_fields
)


def field_path(loc: tuple[int | str, ...], *, unknown_last: bool = False) -> str:
    """``('messages', 0, 'content', 'list[...]', 1, 'image_url')`` → ``messages[0].content[1].image_url``.

    ``unknown_last``: the last part is a field the client sent that the model does not know (keep it).
    """
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in FIELD_NAMES or (unknown_last and i == len(loc) - 1):
            out += f".{part}" if out else part
    return out
