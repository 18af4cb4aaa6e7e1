"""One object for every generation knob, shared by the trainer's evaluation, the CLI and the service."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class UnsupportedGeneration(ValueError):
    """A per-request generation setting this engine cannot honour (the server answers 400 naming ``param``,
    the GenerationConfig field, e.g. ``prompt``). Pickles, so it crosses the model process's pipe intact."""

    def __init__(self, message: str, param: str):
        super().__init__(message, param)
        self.message, self.param = message, param

    def __str__(self) -> str:
        return self.message


@dataclass
class GenerationConfig:
    """Decoding settings. CTC engines use only what applies to them (nothing, for greedy CTC)."""

    max_new_tokens: int = 512
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # DeepSeek-OCR image modes: tiny 512/512, small 640/640, base 1024/1024, large 1280/1280, gundam 1024/640+crop
    base_size: int | None = None
    image_size: int | None = None
    crop_mode: bool | None = None
    prompt: str | None = None
    # olmOCR-style retries of outputs that hit max_new_tokens without an end token (or loop). Applied by
    # OCRService, the one retry policy for every engine (deepsynth.inference.guard); engines ignore it.
    retry_truncated: int = 0
    # repetition guard: flag (and on retry, raise no_repeat_ngram_size for) outputs with a repeated n-gram
    repetition_ngram: int = 8
    repetition_threshold: int = 4
    # per-token log-probabilities on Prediction.logprobs, with this many alternatives per token (None: none).
    # VLMs give both; a CTC recogniser gives its characters' and refuses alternatives; other engines ignore it
    top_logprobs: int | None = None

    def to_hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate``."""
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
