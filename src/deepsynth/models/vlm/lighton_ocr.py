"""LightOnOCR (transformers-native ``lighton_ocr``: Pixtral vision + Qwen3 text), ChatML prompt."""

from __future__ import annotations

from typing import Any, ClassVar

from deepsynth.models.vlm.base import VLMAdapter, make_build
from deepsynth.models.vlm.lora import LoraPreset, decoder_presets
from deepsynth.models.vlm.qwen_vl import chat_prompt

_VISION_LINEAR = (
    r"model\.vision_encoder\.transformer\.layers\.\d+\.(attention\.(q_proj|k_proj|v_proj|o_proj)"
    r"|feed_forward\.(gate_proj|up_proj|down_proj))|model\.vision_projection\.linear_\d"
)
PRESETS = decoder_presets(_VISION_LINEAR, "Pixtral encoder + projector")


class LightOnOcrAdapter(VLMAdapter):
    """LightOnOCR: the image alone in a user turn (its default), answer ends with <|im_end|>."""

    family: ClassVar[str] = "lighton_ocr"
    default_prompt: ClassVar[str] = ""
    lora_presets: ClassVar[dict[str, LoraPreset]] = PRESETS
    int8_skip_modules: ClassVar[list[str]] = ["model.vision_encoder", "model.vision_projection"]

    def prompt_text(self, prompt: str, n_images: int = 1) -> str:
        return chat_prompt(self.processor, prompt, self.processor.image_token)

    def end_token_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    @classmethod
    def load_processor(cls, ref: str, **kw: Any) -> Any:
        from transformers import LightOnOcrProcessor

        return LightOnOcrProcessor.from_pretrained(ref, backend="pil", **kw)


build = make_build(LightOnOcrAdapter)
