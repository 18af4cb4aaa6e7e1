"""Token accounting for the optical-compression benchmark: the vision tokens an engine spends on an image (per
image mode) and the text tokens a ground truth is under the engine's own tokenizer.

* VLMs (DeepSeek-OCR-2, GOT-OCR2, LightOnOCR, Qwen-VL): the image placeholder tokens the family's processor
  writes into the prompt for that image and mode - tiles and dynamic resolution included, exactly the
  positions the model fills with vision embeddings; text tokens from its tokenizer (no special tokens).
  DeepSeek-OCR-2 has modes (its named image modes that fit the model: base and gundam on the released one).
* TrOCR: the encoder's output length for the processed image.
* PP-OCR recogniser (``ppocr``, ``ppocr-onnx``): CTC frames for the line alone; text tokens are characters.
* ``ppocr-page``: the frames of every line the detector finds on the page.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from PIL import Image

from deepsynth.models.generation import GenerationConfig

Modes = dict[str, GenerationConfig | None]


class TokenCounter(Protocol):
    """What the compression benchmark needs from an engine besides ``recognize``."""

    def modes(self) -> Modes:
        """Named image modes (GenerationConfig overrides); ``{"default": None}`` for engines without modes."""
        ...

    def text_tokens(self, text: str) -> int: ...

    def vision_tokens(self, image: Image.Image, generation: GenerationConfig | None = None) -> int: ...


class VLMTokens:
    """Processor-counted image tokens and tokenizer-counted text tokens of a :class:`VLMAdapter`."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        tok = adapter.tokenizer
        self.image_token_id = getattr(adapter.processor, "image_token_id", None) or getattr(
            tok, "image_token_id", None
        )
        self._encoder_len: dict[tuple, int] = {}

    def modes(self) -> Modes:
        from deepsynth.models.vlm.deepseek_ocr2 import IMAGE_MODES, TINY_IMAGE_MODES, DeepseekOcr2Adapter

        if not isinstance(self.adapter, DeepseekOcr2Adapter):
            return {"default": None}
        table = TINY_IMAGE_MODES if self.adapter.source.get("kind") == "tiny" else IMAGE_MODES
        out: Modes = {}
        for name, mode in table.items():
            gen = GenerationConfig(
                base_size=mode.base_size, image_size=mode.image_size, crop_mode=mode.crop_mode
            )
            try:
                self.adapter.mode_for(gen)  # raises for modes this model's vision tower cannot run
            except ValueError:
                continue
            out[name] = gen
        return out or {"default": None}

    def text_tokens(self, text: str) -> int:
        return len(self.adapter.tokenizer(text, add_special_tokens=False)["input_ids"])

    def vision_tokens(self, image: Image.Image, generation: GenerationConfig | None = None) -> int:
        from deepsynth.models.vlm.trocr import TrOCRAdapter

        if isinstance(self.adapter, TrOCRAdapter):
            return self._trocr_tokens(image)
        enc = self.adapter.encode_prompts([image], self.adapter.prompt, generation)
        return int((enc["input_ids"][0] == self.image_token_id).sum())

    def _trocr_tokens(self, image: Image.Image) -> int:
        import torch

        pixels = self.adapter.processor(images=[image], return_tensors="pt")["pixel_values"]
        key = tuple(pixels.shape)
        if key not in self._encoder_len:
            with torch.no_grad():
                out = self.adapter.model.get_encoder()(pixel_values=pixels.to(self.adapter.device))
            self._encoder_len[key] = int(out.last_hidden_state.shape[1])
        return self._encoder_len[key]


class CTCTokens:
    """A PP-OCR line recogniser: one line's CTC frames; a character is a text token."""

    def modes(self) -> Modes:
        return {"default": None}

    def text_tokens(self, text: str) -> int:
        return len(text.strip())

    def vision_tokens(self, image: Image.Image, generation: GenerationConfig | None = None) -> int:
        from deepsynth.models.ppocr.preprocess import batch_width, frames_for_width

        return frames_for_width(batch_width([image.size]))


class PageTokens(CTCTokens):
    """``ppocr-page``: the frames of every line crop the shipped detector finds on the page."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def vision_tokens(self, image: Image.Image, generation: GenerationConfig | None = None) -> int:
        quads, _ = self.reader.detect(image)
        total = 0
        for q in np.asarray(quads, dtype=np.float64):  # crop size as rapidocr's get_rotate_crop_image
            w = max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[2] - q[3]))
            h = max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2]))
            total += super().vision_tokens(Image.new("L", (max(1, int(w)), max(1, int(h)))))
        return total


def token_counter(engine: Any) -> TokenCounter:
    """The token accounting of an engine; ValueError naming it when the benchmark cannot count its tokens."""
    from deepsynth.models.ppocr.adapter import PPOCRAdapter
    from deepsynth.models.ppocr.onnx_engine import PPOCROnnxEngine
    from deepsynth.models.ppocr.pages import PageReader
    from deepsynth.models.vlm.base import VLMAdapter

    if isinstance(engine, VLMAdapter):
        return VLMTokens(engine)
    if isinstance(engine, PPOCRAdapter | PPOCROnnxEngine):
        return CTCTokens()
    if isinstance(engine, PageReader):
        return PageTokens(engine)
    name = getattr(engine, "name", type(engine).__name__)
    raise ValueError(
        f"engine {name}: vision tokens cannot be counted for it (supported: the VLM families, ppocr, "
        "ppocr-onnx, ppocr-page)"
    )
