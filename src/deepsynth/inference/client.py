"""A remote server as an OCREngine: a DeepSynth server (``/v1/ocr``) or any OpenAI-compatible one
(``/v1/chat/completions``: vLLM, SGLang, LM Studio, ...). Registry spec: ``server:http://host:8000``.

    engine = load_engine("server:http://127.0.0.1:8000")         # protocol detected from /v1/models
    engine = load_engine("server:http://gpu-box:8000/v1", protocol="openai", model="deepseek-ai/DeepSeek-OCR-2")

Images travel inline (PNG, base64). A 429 from the server is retried after its ``Retry-After``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from deepsynth import envs
from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig

DEFAULT_PROMPT = "Transcribe all the text in this image. Output only the text."
_DEFAULTS = dataclasses.asdict(GenerationConfig())


class RemoteError(RuntimeError):
    """The remote server could not be reached or refused a request (message includes its answer)."""


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def generation_overrides(gen: GenerationConfig | None) -> dict[str, Any]:
    """Only the settings that differ from the defaults (so the server's own defaults stay in force)."""
    if gen is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(gen).items() if _DEFAULTS.get(k) != v}


class RemoteEngine:
    """OCREngine that sends images to a server. ``protocol``: auto | deepsynth | openai."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        protocol: str = "auto",
        model: str | None = None,
        timeout_s: float = 300.0,
        concurrency: int = 4,
        max_images_per_request: int = 16,
        max_retries_429: int = 20,
        prompt: str | None = None,
    ):
        import httpx

        if protocol not in {"auto", "deepsynth", "openai"}:
            raise ValueError(f"protocol must be auto, deepsynth or openai, got {protocol!r}")
        base = url.rstrip("/")
        if base.endswith("/chat/completions"):
            base, protocol = (
                base.removesuffix("/chat/completions"),
                "openai" if protocol == "auto" else protocol,
            )
        base = base.removesuffix("/v1")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
        self.base_url = base
        self.protocol = protocol
        self.model = model
        self.prompt = prompt
        self.concurrency = max(1, concurrency)
        self.max_images = max(1, max_images_per_request)
        self.max_retries_429 = max_retries_429
        token = token or envs.DEEPSYNTH_API_TOKEN or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout_s)
        self.name = f"server:{base}"

    def close(self) -> None:
        self._http.close()

    # -- protocol detection ----------------------------------------------------------------------------
    def _detect(self) -> None:
        if self.protocol != "auto" and (self.protocol == "deepsynth" or self.model):
            return
        data = self._request("GET", "/v1/models").get("data") or []
        ours = [m for m in data if m.get("owned_by") == "deepsynth"]
        if self.protocol == "auto":
            self.protocol = "deepsynth" if ours else "openai"
        if self.model is None and data:
            self.model = (ours or data)[0].get("id")
        if self.protocol == "openai" and not self.model:
            raise RemoteError(f"{self.base_url}/v1/models lists no model; pass model=...")

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        for _attempt in range(self.max_retries_429 + 1):
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise RemoteError(f"cannot reach {self.base_url}{path}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 429:
                time.sleep(min(float(resp.headers.get("retry-after", "1") or 1), 10.0))
                continue
            if resp.status_code >= 400:
                try:
                    message = resp.json()["error"]["message"]
                except Exception:
                    message = resp.text[:500]
                raise RemoteError(f"{self.base_url}{path} answered {resp.status_code}: {message}")
            return resp.json()
        raise RemoteError(
            f"{self.base_url}{path} stayed overloaded (429) after {self.max_retries_429} retries"
        )

    # -- OCREngine -------------------------------------------------------------------------------------
    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        if not images:
            return []
        self._detect()
        if self.protocol == "deepsynth":
            chunks = [images[i : i + self.max_images] for i in range(0, len(images), self.max_images)]
            work, calls = self._ocr_chunk, chunks
        else:
            work, calls = self._chat_one, [[img] for img in images]
        if len(calls) == 1:
            results = [work(calls[0], generation)]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(calls))) as pool:
                results = list(pool.map(lambda c: work(c, generation), calls))
        return [p for chunk in results for p in chunk]

    def _ocr_chunk(self, images: Sequence[Image.Image], gen: GenerationConfig | None) -> list[Prediction]:
        body: dict[str, Any] = {"images": [_png_b64(img) for img in images]}
        overrides = generation_overrides(gen)
        if overrides:
            body["generation"] = overrides
        out = self._request("POST", "/v1/ocr", json=body)
        preds = []
        for page in out["pages"]:
            meta = {k: page[k] for k in ("repetition", "truncated", "retries") if k in page}
            meta["request_id"] = out.get("id")
            meta["timings"] = out.get("timings", {})
            preds.append(
                Prediction(
                    text=page["text"],
                    confidence=page.get("confidence"),
                    finished=page.get("finished"),
                    num_tokens=page.get("num_tokens"),
                    lines=page.get("lines") or [],
                    meta=meta,
                )
            )
        if len(preds) != len(images):
            raise RemoteError(f"{self.base_url}/v1/ocr returned {len(preds)} pages for {len(images)} images")
        return preds

    def _chat_one(self, images: Sequence[Image.Image], gen: GenerationConfig | None) -> list[Prediction]:
        gen = gen or GenerationConfig()
        prompt = gen.prompt or self.prompt or DEFAULT_PROMPT
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + _png_b64(images[0])},
                        },
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
            "max_tokens": gen.max_new_tokens,
            "temperature": gen.temperature if gen.do_sample else 0.0,
        }
        if gen.do_sample and gen.top_p < 1.0:
            body["top_p"] = gen.top_p
        out = self._request("POST", "/v1/chat/completions", json=body)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return [
            Prediction(
                text=choice["message"].get("content") or "",
                finished=choice.get("finish_reason") != "length",
                num_tokens=usage.get("completion_tokens"),
                meta={"request_id": out.get("id")},
            )
        ]


def build(arg: str | None = None, **kwargs: Any) -> RemoteEngine:
    """Registry factory: ``server:URL``; options token, protocol, model, timeout_s, concurrency, prompt."""
    if not arg:
        raise ValueError("the server engine needs a URL: server:http://host:port")
    return RemoteEngine(arg, **kwargs)
