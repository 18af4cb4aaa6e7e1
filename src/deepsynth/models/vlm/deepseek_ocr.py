"""DeepSeek-OCR (v1) through its hub remote code — inference only, behind an explicit ``trust_remote_code``.

DeepSeek-OCR v1 is not part of transformers: its modelling code lives in the hub repository
``deepseek-ai/DeepSeek-OCR`` and runs with ``trust_remote_code=True`` through its own ``infer()`` API (which
reads image files). Users with network access can evaluate and serve it here::

    DEEPSYNTH_TRUST_REMOTE_CODE=1 deepsynth ocr --model deepseek_ocr:deepseek-ai/DeepSeek-OCR page.png

This path is *not exercised* by DeepSynth's tests (no network, no weights here). For fine-tuning use
DeepSeek-OCR-2 (``deepseek_ocr2``), which transformers supports natively and which every test covers.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from deepsynth import envs
from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.vlm.base import as_bool
from deepsynth.models.vlm.deepseek_ocr2 import FREE_OCR, IMAGE_MODES, PROMPTS

V1_IMAGE_MODES = {**IMAGE_MODES, "gundam": IMAGE_MODES["gundam"].__class__(1024, 640, True)}


class DeepseekOcrRemoteEngine:
    """OCREngine over DeepSeek-OCR v1's remote code (``model.infer``)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, ref: str, prompt: str = FREE_OCR, image_mode: str = "gundam"
    ):
        if image_mode not in V1_IMAGE_MODES:
            raise ValueError(f"unknown image_mode {image_mode!r}; choose one of {', '.join(V1_IMAGE_MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = f"deepseek_ocr:{ref}"
        self.prompt = PROMPTS.get(prompt, prompt)
        self.mode = V1_IMAGE_MODES[image_mode]

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        gen = generation or GenerationConfig()
        base = gen.base_size or self.mode.base_size
        size = gen.image_size or self.mode.image_size
        crop = self.mode.crop_mode if gen.crop_mode is None else gen.crop_mode
        prompt = PROMPTS.get(gen.prompt or "", gen.prompt) or self.prompt
        accepts = inspect.signature(self.model.infer).parameters
        preds = []
        with tempfile.TemporaryDirectory(prefix="deepsynth-dsocr-") as tmp:
            for i, image in enumerate(images):
                path = Path(tmp) / f"{i}.png"
                image.convert("RGB").save(path)
                kw: dict[str, Any] = dict(
                    prompt=prompt,
                    image_file=str(path),
                    output_path=tmp,
                    base_size=base,
                    image_size=size,
                    crop_mode=crop,
                    save_results=False,
                )
                if "eval_mode" in accepts:
                    kw["eval_mode"] = True
                text = self.model.infer(self.tokenizer, **kw)
                preds.append(Prediction(text=(text or "").strip(), meta={"family": "deepseek_ocr"}))
        return preds


def build(
    arg: str | None = None, *, trust_remote_code: bool = False, **options: Any
) -> DeepseekOcrRemoteEngine:
    """``deepseek_ocr:HUB_ID_OR_PATH`` with ``trust_remote_code=True`` (runs code downloaded from the hub)."""
    ref = arg or "deepseek-ai/DeepSeek-OCR"
    trust_remote_code = as_bool(trust_remote_code) or envs.DEEPSYNTH_TRUST_REMOTE_CODE
    if not trust_remote_code:
        raise ValueError(
            "DeepSeek-OCR (v1) only exists as hub remote code: pass trust_remote_code=true "
            "(--engine-opt trust_remote_code=true, or DEEPSYNTH_TRUST_REMOTE_CODE=1) to run the code from "
            f"{ref}, which needs network access. For fine-tuning use deepseek_ocr2 (native in transformers)."
        )
    import torch
    from transformers import AutoModel, AutoTokenizer

    from deepsynth.models.vlm.loading import attn_implementation, pick_device, pick_dtype

    device = pick_device(options.get("device"))
    kw: dict[str, Any] = {"trust_remote_code": True, "use_safetensors": True}
    impl = attn_implementation(options.get("attn_implementation", "auto"))
    if impl:
        kw["_attn_implementation"] = impl
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=True)
    model = AutoModel.from_pretrained(ref, **kw).eval().to(device)
    model = model.to(pick_dtype(options.get("dtype"), device) if device != "cpu" else torch.float32)
    return DeepseekOcrRemoteEngine(
        model,
        tokenizer,
        ref=ref,
        prompt=options.get("prompt") or FREE_OCR,
        image_mode=options.get("image_mode") or "gundam",
    )
