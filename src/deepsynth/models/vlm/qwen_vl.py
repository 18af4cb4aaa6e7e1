"""Qwen2.5-VL and Qwen3-VL: ChatML prompt, image-only processors (no torchvision video processor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from deepsynth.models.vlm.base import VLMAdapter, make_build
from deepsynth.models.vlm.lora import LoraPreset, decoder_presets

if TYPE_CHECKING:
    from deepsynth.models.generation import GenerationConfig

DEFAULT_PROMPT = "Read all the text in the image."
_VISION_LINEAR = (
    r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj|linear_fc1|linear_fc2))"
    r"|model\.visual\.(merger|deepstack_merger_list\.\d+)\.(mlp\.(0|2)|linear_fc1|linear_fc2)"
)
PRESETS = decoder_presets(_VISION_LINEAR, "vision blocks + merger")


def image_processor(**kw: Any) -> Any:
    """The PIL Qwen2-VL image processor (also used by Qwen3-VL checkpoints)."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**kw)


def _image_only(parent: Any) -> Any:
    class ImageOnly(parent):
        """The stock processor minus its video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
            from transformers.processing_utils import ProcessorMixin

            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
            self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
            self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
            self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"{parent.__name__}ImageOnly"
    return ImageOnly


def processor_class(kind: str) -> Any:
    from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor

    return _image_only(Qwen3VLProcessor if kind == "qwen3_vl" else Qwen2_5_VLProcessor)


def make_processor(kind: str, image_proc: Any, tokenizer: Any) -> Any:
    return processor_class(kind)(image_processor=image_proc, tokenizer=tokenizer)


def chatml(prompt: str, image_markup: str) -> str:
    """A ChatML user turn with one image then the instruction, ending with the assistant header."""
    return f"<|im_start|>user\n{image_markup}{prompt}<|im_end|>\n<|im_start|>assistant\n"


def chat_prompt(processor: Any, prompt: str, image_markup: str) -> str:
    """The checkpoint's own chat template when it ships one (real models), else plain ChatML (tiny models)."""
    if getattr(processor, "chat_template", None):
        content: list[dict[str, str]] = [{"type": "image"}]
        if prompt:
            content.append({"type": "text", "text": prompt})
        return processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    return chatml(prompt, image_markup)


class _QwenVLAdapter(VLMAdapter):
    default_prompt: ClassVar[str] = DEFAULT_PROMPT
    lora_presets: ClassVar[dict[str, LoraPreset]] = PRESETS
    int8_skip_modules: ClassVar[list[str]] = ["model.visual"]
    kind: ClassVar[str] = ""

    def prompt_text(self, prompt: str, n_images: int = 1) -> str:
        p = self.processor
        return chat_prompt(p, prompt, f"{p.vision_start_token}{p.image_token}{p.vision_end_token}")

    def image_kwargs(self, generation: GenerationConfig | None = None) -> dict[str, Any]:
        return {"return_mm_token_type_ids": True}

    def end_token_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    @classmethod
    def load_processor(cls, ref: str, **kw: Any) -> Any:
        return processor_class(cls.kind).from_pretrained(ref, backend="pil", **kw)


class Qwen25VLAdapter(_QwenVLAdapter):
    family: ClassVar[str] = "qwen2_5_vl"
    kind: ClassVar[str] = "qwen2_5_vl"


class Qwen3VLAdapter(_QwenVLAdapter):
    family: ClassVar[str] = "qwen3_vl"
    kind: ClassVar[str] = "qwen3_vl"


build_qwen2_5 = make_build(Qwen25VLAdapter)
build_qwen3 = make_build(Qwen3VLAdapter)
