"""GOT-OCR2 (transformers-native ``got_ocr2``): the processor writes GOT's own chat prompt."""

from __future__ import annotations

from typing import Any, ClassVar

from deepsynth.models.generation import UnsupportedGeneration
from deepsynth.models.vlm.base import VLMAdapter, make_build
from deepsynth.models.vlm.lora import LoraPreset, decoder_presets

_VISION_LINEAR = r"model\.vision_tower\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(lin1|lin2))|model\.multi_modal_projector\.multimodal_projector"
PRESETS = decoder_presets(_VISION_LINEAR, "SAM encoder + projector")
PROMPTS = {"ocr": False, "plain": False, "format": True, "markdown": True}


class GotOcr2Adapter(VLMAdapter):
    """GOT-OCR2: prompt ``ocr`` (plain text) or ``format`` (formatted/markdown), answer ends with <|im_end|>."""

    family: ClassVar[str] = "got_ocr2"
    default_prompt: ClassVar[str] = "ocr"
    lora_presets: ClassVar[dict[str, LoraPreset]] = PRESETS
    int8_skip_modules: ClassVar[list[str]] = ["model.vision_tower", "model.multi_modal_projector"]

    def resolve_prompt(self, prompt: str | None) -> str:
        prompt = prompt or "ocr"
        if prompt not in PROMPTS:
            raise UnsupportedGeneration(
                f"GOT-OCR2 prompts are fixed by its processor: {prompt!r} is not one of them; "
                f"choose one of {', '.join(PROMPTS)}",
                "prompt",
            )
        return prompt

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image: the vision grid after SAM's patching and the projector's two 2x convs."""
        v = self.model.config.vision_config
        return (v.image_size // v.patch_size // 4) ** 2

    def encode_prompts(self, images, prompt, generation=None, padding_side="left"):  # noqa: ANN001
        return self.processor(
            images=list(images),
            return_tensors="pt",
            padding=True,
            padding_side=padding_side,
            format=PROMPTS[prompt],
            num_image_tokens=self.num_image_tokens,
        )

    def end_token_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    @classmethod
    def load_processor(cls, ref: str, **kw: Any) -> Any:
        from transformers import GotOcr2Processor

        return GotOcr2Processor.from_pretrained(ref, backend="pil", **kw)


build = make_build(GotOcr2Adapter)
