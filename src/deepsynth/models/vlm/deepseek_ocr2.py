"""DeepSeek-OCR-2 (transformers-native ``deepseek_ocr2``): prompts, image modes, LoRA presets.

Image modes follow DeepSeek's ``base_size`` / ``image_size`` / ``crop_mode`` knobs:

=======  =========  ==========  =========  ==============================================
mode     base_size  image_size  crop_mode  views
=======  =========  ==========  =========  ==============================================
tiny     512        512         False      1 global view (DeepSeek-OCR v1 mode)
small    640        640         False      1 global view (DeepSeek-OCR v1 mode)
base     1024       1024        False      1 global view, 256 tokens
large    1280       1280        False      1 global view (DeepSeek-OCR v1 mode)
gundam   1024       768         True       global 1024 view + 0-6 local 768 tiles (OCR-2 default)
=======  =========  ==========  =========  ==============================================

DeepSeek-OCR-2's vision tower emits a *fixed* number of query tokens per view: 144 when the SAM grid after
its 4x neck has at most 144 cells (768 px), 256 otherwise (1024 px). The processor writes
``ceil(size / patch / 4)^2`` image tokens per view, so only views of 768 or 1024 px agree;
:func:`check_image_tokens` raises a clear error for the others instead of the model's shape error.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from deepsynth.models.generation import GenerationConfig
from deepsynth.models.vlm.base import VLMAdapter, as_bool, make_build
from deepsynth.models.vlm.lora import LoraPreset

FREE_OCR = "<image>\nFree OCR."
MARKDOWN = "<image>\n<|grounding|>Convert the document to markdown."
PROMPTS = {"free_ocr": FREE_OCR, "ocr": FREE_OCR, "markdown": MARKDOWN, "document": MARKDOWN}


@dataclass(frozen=True)
class ImageMode:
    base_size: int
    image_size: int
    crop_mode: bool


IMAGE_MODES: dict[str, ImageMode] = {
    "tiny": ImageMode(512, 512, False),
    "small": ImageMode(640, 640, False),
    "base": ImageMode(1024, 1024, False),
    "large": ImageMode(1280, 1280, False),
    "gundam": ImageMode(1024, 768, True),
}

# The tiny random model (tests, smoke) has one consistent view size, 96 px (144 tokens): its "base" and
# "gundam" keep the structure (one global view; global view + tiles) at that size.
TINY_IMAGE_MODES: dict[str, ImageMode] = {"base": ImageMode(96, 96, False), "gundam": ImageMode(96, 96, True)}

_LM = r"model\.language_model\.layers\.\d+\."
_LM_LINEAR = (
    _LM + r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj))"
)
_VISION_LINEAR = (
    r"model\.vision_tower\.vision_encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.(gate_proj|up_proj|down_proj))"
    r"|model\.vision_tower\.sam_encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(lin1|lin2))"
    r"|model\.multi_modal_projector"
)
_EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]

PRESETS = {
    "language-model": LoraPreset(_LM_LINEAR, None, "text decoder attention + dense/shared-expert MLPs"),
    "language-model+experts": LoraPreset(_LM_LINEAR, _EXPERTS, "language-model + routed MoE experts"),
    "all-linear": LoraPreset(f"{_LM_LINEAR}|{_VISION_LINEAR}", None, "language model + SAM + Qwen2 encoder"),
    "all-linear+experts": LoraPreset(
        f"{_LM_LINEAR}|{_VISION_LINEAR}", _EXPERTS, "all-linear + routed experts"
    ),
}


_GROUNDED = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*?)<\|/det\|>", re.S)


def parse_grounding(raw: str) -> tuple[str, list[dict[str, Any]]]:
    """Split DeepSeek grounding output into clean text and regions.

    ``<|ref|>title<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>\n# Heading`` gives the text ``# Heading`` and a
    region ``{"type": "title", "boxes": [[x1, y1, x2, y2]], "text": "# Heading"}`` (coordinates on DeepSeek's
    0-999 grid). Text without grounding tags is returned unchanged.
    """
    matches = list(_GROUNDED.finditer(raw))
    if not matches:
        return raw.strip(), []
    regions, parts = [], [raw[: matches[0].start()]]
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        content = raw[m.end() : end]
        parts.append(content)
        try:
            boxes = ast.literal_eval(m.group(2).strip())
        except (ValueError, SyntaxError):
            boxes = []
        regions.append({"type": m.group(1).strip(), "boxes": boxes, "text": content.strip()})
    return "".join(parts).strip(), regions


def view_tokens(size: int, *, processor_patch: int, downsample: int) -> int:
    """Image tokens the processor writes for one square view of ``size`` px."""
    return math.ceil(size / processor_patch / downsample) ** 2


def model_view_tokens(size: int, *, sam_patch: int, neck_stride: int = 4) -> int:
    """Query tokens DeepSeek-OCR-2's vision tower emits for one view of ``size`` px (144 or 256)."""
    cells = (size // sam_patch // neck_stride) ** 2
    return 144 if cells <= 144 else 256


def _mismatch(
    base_size: int, image_size: int, crop_mode: bool, *, processor_patch: int, downsample: int, sam_patch: int
) -> tuple[str, int, int, int] | None:
    """(view, size, processor tokens, model tokens) of the first inconsistent view, or None."""
    views = [("global view (base_size)", base_size)]
    if crop_mode:
        views.append(("local tiles (image_size)", image_size))
    for what, size in views:
        wrote = view_tokens(size, processor_patch=processor_patch, downsample=downsample)
        emits = model_view_tokens(size, sam_patch=sam_patch)
        if wrote != emits:
            return what, size, wrote, emits
    return None


def check_image_tokens(
    base_size: int, image_size: int, crop_mode: bool, *, processor_patch: int, downsample: int, sam_patch: int
) -> int:
    """Raise ValueError unless processor and model agree on tokens per view; returns tokens of the global view."""
    geometry = {"processor_patch": processor_patch, "downsample": downsample, "sam_patch": sam_patch}
    bad = _mismatch(base_size, image_size, crop_mode, **geometry)
    if bad is not None:
        what, size, wrote, emits = bad
        ok = [
            n
            for n, m in IMAGE_MODES.items()
            if _mismatch(m.base_size, m.image_size, m.crop_mode, **geometry) is None
        ]
        raise ValueError(
            f"DeepSeek-OCR-2 image mode mismatch: the {what} of {size} px gets {wrote} image tokens from "
            f"the processor but the vision tower emits {emits} query tokens per view. DeepSeek-OCR-2 only "
            f"supports views whose token grids are 12x12 or 16x16 (768 / 1024 px on the released model); "
            f"modes that fit this model: {', '.join(ok) or 'none of the named ones'}"
            f" (tiny/small/large are DeepSeek-OCR v1 modes: use the deepseek_ocr family for them)."
        )
    return view_tokens(base_size, processor_patch=processor_patch, downsample=downsample)


class DeepseekOcr2Adapter(VLMAdapter):
    """DeepSeek-OCR-2: plain-text prompt (no chat template), answer ends with the tokenizer's EOS."""

    family: ClassVar[str] = "deepseek_ocr2"
    default_prompt: ClassVar[str] = FREE_OCR
    lora_presets: ClassVar[dict[str, LoraPreset]] = PRESETS
    int8_skip_modules: ClassVar[list[str]] = ["model.vision_tower"]
    checkpoint_hint: ClassVar[str] = (
        "deepseek_ocr2 needs a transformers-native checkpoint (model_type deepseek_ocr2), e.g. "
        "deepseek-community/DeepSeek-OCR-2; the deepseek-ai/DeepSeek-OCR-2 repository holds remote code."
    )

    def __init__(self, model: Any, processor: Any, **kw: Any):
        super().__init__(model, processor, **kw)
        self.mode = self._resolve_mode(self.options)
        self.check_mode(self.mode)

    def resolve_prompt(self, prompt: str | None) -> str:
        prompt = PROMPTS.get(prompt or "", prompt) or FREE_OCR
        if "<image>" not in prompt:
            prompt = "<image>\n" + prompt
        return prompt

    def _resolve_mode(self, opts: dict[str, Any]) -> ImageMode:
        ip = self.processor.image_processor
        default = ImageMode(ip.size["height"], ip.tile_size, bool(ip.crop_to_patches))
        name = opts.get("image_mode")
        if name is not None:
            if name not in IMAGE_MODES:
                raise ValueError(f"unknown image_mode {name!r}; choose one of {', '.join(IMAGE_MODES)}")
            table = TINY_IMAGE_MODES if self.source.get("kind") == "tiny" else IMAGE_MODES
            default = table.get(name, IMAGE_MODES[name])
        return ImageMode(
            int(opts.get("base_size") or default.base_size),
            int(opts.get("image_size") or default.image_size),
            default.crop_mode if opts.get("crop_mode") is None else as_bool(opts["crop_mode"]),
        )

    def mode_for(self, gen: GenerationConfig | None) -> ImageMode:
        if gen is None or (gen.base_size is None and gen.image_size is None and gen.crop_mode is None):
            return self.mode
        mode = ImageMode(
            gen.base_size or self.mode.base_size,
            gen.image_size or self.mode.image_size,
            self.mode.crop_mode if gen.crop_mode is None else gen.crop_mode,
        )
        self.check_mode(mode)
        return mode

    def check_mode(self, mode: ImageMode) -> int:
        sam = self.model.config.vision_config.sam_config
        sam_patch = sam.patch_size if isinstance(sam.patch_size, int) else sam.patch_size[0]
        return check_image_tokens(
            mode.base_size,
            mode.image_size,
            mode.crop_mode,
            processor_patch=self.processor.patch_size,
            downsample=self.processor.downsample_ratio,
            sam_patch=sam_patch,
        )

    def image_kwargs(self, generation: GenerationConfig | None = None) -> dict[str, Any]:
        mode = self.mode_for(generation)
        # without crop mode the processor sizes the single view by tile_size: keep both equal to base_size
        tile = mode.image_size if mode.crop_mode else mode.base_size
        return {
            "size": {"height": mode.base_size, "width": mode.base_size},
            "tile_size": tile,
            "crop_to_patches": mode.crop_mode,
        }

    def postprocess(self, token_ids: list[int]) -> tuple[str, list[dict[str, Any]]]:
        """Grounding tags (``<|ref|>``/``<|det|>``) become regions; the text keeps only the content."""
        raw = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        if "<|ref|>" not in raw:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip(), []
        text, regions = parse_grounding(raw)
        specials = [
            t
            for t in self.tokenizer.all_special_tokens
            if t not in ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>")
        ]
        for tok in specials:
            text = text.replace(tok, "")
        return text.strip(), regions

    @classmethod
    def load_processor(cls, ref: str, **kw: Any) -> Any:
        from transformers import DeepseekOcr2Processor

        return DeepseekOcr2Processor.from_pretrained(ref, backend="pil", **kw)


build = make_build(DeepseekOcr2Adapter)
