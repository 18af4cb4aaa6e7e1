"""TrOCR and other VisionEncoderDecoder models: the decoder is supervised on the whole text (no prompt)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from deepsynth.models.generation import GenerationConfig
from deepsynth.models.vlm.base import IGNORE_INDEX, VLMAdapter, make_build
from deepsynth.models.vlm.lora import LoraPreset

_DEC = r"decoder\.model\.decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)|decoder\.model\.decoder\.layers\.\d+\.(fc1|fc2)"
_ENC = (
    r"encoder\.(layers|encoder\.layer)\.\d+\.(attention\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(fc1|fc2)"
    r"|attention\.attention\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
PRESETS = {
    "language-model": LoraPreset(_DEC, None, "text decoder (self + cross attention, MLP)"),
    "all-linear": LoraPreset(f"{_DEC}|{_ENC}", None, "decoder + ViT/DeiT encoder"),
}


class TrOCRAdapter(VLMAdapter):
    """Encoder-decoder OCR: pixel_values → decoder labels (text + EOS; padding masked)."""

    family: ClassVar[str] = "trocr"
    default_prompt: ClassVar[str] = ""
    lora_presets: ClassVar[dict[str, LoraPreset]] = PRESETS
    mixed_batch_modules: ClassVar[str] = r"(^|\.)decoder\."
    int8_skip_modules: ClassVar[list[str]] = ["encoder", "output_projection"]

    def pixel_values(self, images: Sequence[Image.Image]) -> Any:
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def collate(self, samples: Sequence[Any]) -> dict[str, Any]:
        import torch

        from deepsynth.data.sample import SampleError

        if not samples:
            raise ValueError("collate() got an empty list of samples")
        targets = []
        for s in samples:
            ids = self._target_ids(s)
            if len(ids) > self.max_length:
                raise SampleError(s.id, f"answer is {len(ids)} tokens > max_length={self.max_length}")
            targets.append(ids)
        width = max(len(t) for t in targets)
        labels = torch.tensor([t + [IGNORE_INDEX] * (width - len(t)) for t in targets], dtype=torch.long)
        return {"pixel_values": self.pixel_values([s.image for s in samples]), "labels": labels}

    def generate_ids(
        self,
        images: Sequence[Image.Image],
        gen: GenerationConfig,
        prompt: str,
        **generate_kw: Any,
    ) -> tuple[Any, int, list[int]]:
        """Prompt tokens: the encoder's output length (image patches) + the decoder start token."""
        import torch

        px = self._to_device({"pixel_values": self.pixel_values(images)})["pixel_values"]
        kw = gen.to_hf_kwargs()
        kw["eos_token_id"] = self.tokenizer.eos_token_id
        kw["pad_token_id"] = self.tokenizer.pad_token_id
        kw["decoder_start_token_id"] = self.model.config.decoder_start_token_id
        with torch.inference_mode():
            encoded = self.model.get_encoder()(pixel_values=px)
            out = self.model.generate(
                encoder_outputs=encoded, **kw, **generate_kw, return_dict_in_generate=True, output_scores=True
            )
        read = int(encoded.last_hidden_state.shape[1]) + 1
        return out, 1, [read] * len(images)  # generated ids start after the decoder start token

    def logits(self, batch: dict[str, Any]) -> Any:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(**self._to_device(batch)).logits.float().cpu()
        finally:
            self.model.train(was_training)

    @classmethod
    def model_class(cls) -> Any:
        from transformers import VisionEncoderDecoderModel

        return VisionEncoderDecoderModel

    @classmethod
    def load_processor(cls, ref: str, **kw: Any) -> Any:
        from transformers import TrOCRProcessor

        return TrOCRProcessor.from_pretrained(ref, backend="pil", **kw)


build = make_build(TrOCRAdapter)
