"""Tiny random-weight models of the real architectures, with locally built tokenizers and processors.

No download is involved: configs are the real transformers classes shrunk to a few thousand parameters,
tokenizers are byte-level BPEs trained in milliseconds on a small corpus. Used by the tests, by
``make deepseek-ocr-smoke`` (spec ``deepseek_ocr2:smoke``), ``deepsynth doctor`` and the serving benchmarks.
The model layer never imports this module: the registry builds the specs ``FAMILY:tiny``, ``FAMILY:tiny@SEED``
and ``FAMILY:smoke`` through :func:`build_spec` (``registry.TINY_MODELS``)::

    adapter = build_tiny("deepseek_ocr2", seed=0)   # any of FAMILIES (the registry's VLM families)
"""

from __future__ import annotations

import atexit
import shutil
import string
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from deepsynth import envs
from deepsynth.models.registry import load_engine, vlm_families

FAMILIES = tuple(vlm_families())

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "Free OCR. Convert the document to markdown. OCR: system user assistant",
    "0123456789 " + string.punctuation,
    "äöüß éèêàç ſ æœ — « » ‘ ’ “ ”",
]
_TINY_CACHE: dict[str, Path] = {}


def tiny_tokenizer(
    special_tokens: list[str],
    named: dict[str, str] | None = None,
    *,
    vocab_size: int = 360,
    pad: str = "<pad>",
    bos: str | None = None,
    eos: str | None = None,
) -> Any:
    """A byte-level BPE tokenizer (any text round-trips) with the given special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(_CORPUS, trainer)
    kw: dict[str, Any] = {"pad_token": pad}
    if bos:
        kw["bos_token"] = bos
    if eos:
        kw["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tk, extra_special_tokens=named or {}, **kw)


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return make().eval()
    finally:
        torch.random.set_rng_state(state)


def _text(vocab: int, tok: Any, **extra: Any) -> dict[str, Any]:
    base = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        max_position_embeddings=2048,
    )
    base.update(extra)
    return base


# ---------------------------------------------------------------------------- families
def _deepseek_ocr2(seed: int) -> tuple[Any, Any]:
    from transformers import (
        DeepseekOcr2Config,
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2ImageProcessorPil,
        DeepseekOcr2Processor,
    )

    tok = tiny_tokenizer(
        ["<pad>", "<s>", "</s>", "<image>", "<|grounding|>"],
        {"image_token": "<image>"},
        bos="<s>",
        eos="</s>",
    )
    v = len(tok)
    cfg = DeepseekOcr2Config(
        vision_config=dict(
            sam_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=96,
                patch_size=8,
                output_channels=16,
                window_size=4,
                global_attn_indexes=[1],
                downsample_channels=[16, 32],
            ),
            encoder_config=dict(
                vocab_size=v,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
            ),
        ),
        text_config=_text(
            v,
            tok,
            mlp_layer_types=["dense", "sparse"],
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            moe_intermediate_size=16,
        ),
        image_token_id=tok.image_token_id,
    )
    model = _seeded(seed, lambda: DeepseekOcr2ForConditionalGeneration(cfg))
    # 96 px views: SAM grid 12x12 -> /4 neck -> 9 cells -> the model emits 144 queries; the processor counts
    # ceil(96 / 2 / 4)^2 = 144 tokens, so patch_size=2 here stands in for the real 16 px at 1024/768 px.
    ip = DeepseekOcr2ImageProcessorPil(size={"height": 96, "width": 96}, tile_size=96, crop_to_patches=False)
    proc = DeepseekOcr2Processor(image_processor=ip, tokenizer=tok, patch_size=2, downsample_ratio=4)
    return model, proc


def _got_ocr2(seed: int) -> tuple[Any, Any]:
    from transformers import (
        GotOcr2Config,
        GotOcr2ForConditionalGeneration,
        GotOcr2ImageProcessorPil,
        GotOcr2Processor,
    )

    tok = tiny_tokenizer(
        ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"],
        {"image_token": "<imgpad>"},
        pad="<pad>",
        eos="<|im_end|>",
    )
    v = len(tok)
    cfg = GotOcr2Config(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
        ),
        text_config=_text(v, tok, model_type="qwen2"),
        image_token_index=tok.image_token_id,
    )
    model = _seeded(seed, lambda: GotOcr2ForConditionalGeneration(cfg))
    ip = GotOcr2ImageProcessorPil(size={"height": 64, "width": 64})
    proc = GotOcr2Processor(image_processor=ip, tokenizer=tok)
    return model, proc


def _lighton_ocr(seed: int) -> tuple[Any, Any]:
    from transformers import (
        LightOnOcrConfig,
        LightOnOcrForConditionalGeneration,
        LightOnOcrProcessor,
        PixtralImageProcessorPil,
    )

    named = {
        "image_token": "<|image_pad|>",
        "image_break_token": "<|vision_pad|>",
        "image_end_token": "<|vision_end|>",
    }
    tok = tiny_tokenizer(["<pad>", "<|im_start|>", "<|im_end|>", *named.values()], named, eos="<|im_end|>")
    v = len(tok)
    cfg = LightOnOcrConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            head_dim=16,
        ),
        text_config=_text(v, tok, model_type="qwen3", head_dim=16),
        image_token_id=tok.image_token_id,
        spatial_merge_size=2,
    )
    model = _seeded(seed, lambda: LightOnOcrForConditionalGeneration(cfg))
    ip = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=16)
    proc = LightOnOcrProcessor(image_processor=ip, tokenizer=tok, patch_size=8, spatial_merge_size=2)
    return model, proc


def _qwen_tokenizer() -> Any:
    named = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    return tiny_tokenizer(["<pad>", "<|im_start|>", "<|im_end|>", *named.values()], named, eos="<|im_end|>")


def _qwen_vision_text(tok: Any, qwen3: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    v = len(tok)
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
    }  # sums to head_dim/2 = 8
    text = _text(v, tok, rope_parameters=rope, bos_token_id=None)
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        patch_size=8,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if qwen3:
        text["head_dim"] = 16
        rope["mrope_interleaved"] = True
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[1])
    else:
        vision.update(window_size=32, fullatt_block_indexes=[1])
    return vision, text


def _qwen_vl(family: str, seed: int) -> tuple[Any, Any]:
    """Qwen2.5-VL (``family="qwen2_5_vl"``) or Qwen3-VL (``"qwen3_vl"``): same tokenizer, shape and processor."""
    import transformers

    from deepsynth.models.vlm.qwen_vl import image_processor, make_processor

    prefix = {"qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[family]
    config_cls = getattr(transformers, f"{prefix}Config")
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    tok = _qwen_tokenizer()
    vision, text = _qwen_vision_text(tok, qwen3=family == "qwen3_vl")
    cfg = config_cls(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
    )
    model = _seeded(seed, lambda: model_cls(cfg))
    return model, make_processor(
        family, image_processor(patch_size=8, min_pixels=32 * 32, max_pixels=64 * 64), tok
    )


def _trocr(seed: int) -> tuple[Any, Any]:
    from transformers import (
        TrOCRConfig,
        TrOCRProcessor,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    tok = tiny_tokenizer(["<pad>", "<s>", "</s>"], bos="<s>", eos="</s>")
    enc = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    dec = TrOCRConfig(
        vocab_size=len(tok),
        d_model=32,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.bos_token_id,
    )
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = tok.bos_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    model = _seeded(seed, lambda: VisionEncoderDecoderModel(config=cfg))
    ip = ViTImageProcessorPil(size={"height": 32, "width": 32})
    return model, TrOCRProcessor(image_processor=ip, tokenizer=tok)


_BUILDERS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "deepseek_ocr2": _deepseek_ocr2,
    "got_ocr2": _got_ocr2,
    "lighton_ocr": _lighton_ocr,
    "qwen2_5_vl": partial(_qwen_vl, "qwen2_5_vl"),
    "qwen3_vl": partial(_qwen_vl, "qwen3_vl"),
    "trocr": _trocr,
}


def tiny_checkpoint(family: str, seed: int = 0) -> Path:
    """A tiny model saved with ``save_pretrained`` (model + processor) in a temp dir, cached per process."""
    key = f"{family}@{seed}"
    if key not in _TINY_CACHE or not _TINY_CACHE[key].is_dir():
        model, proc = _BUILDERS[family](seed)
        out = Path(tempfile.mkdtemp(prefix=f"deepsynth-tiny-{family}-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        model.save_pretrained(out)
        proc.save_pretrained(out)
        _TINY_CACHE[key] = out
    return _TINY_CACHE[key]


def build_tiny(family: str, seed: int = 0, **options: Any) -> Any:
    """A random-weight tiny adapter of ``family`` (deterministic for a seed).

    ``quantization: 4bit|8bit`` goes through a temporary checkpoint and bitsandbytes loading, exactly the
    path a real model takes; other options (prompt, image_mode, gradient_checkpointing, ...) as for ``build``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; known: {', '.join(_BUILDERS)}")
    from deepsynth.models.vlm import adapter_class

    cls = adapter_class(family)
    source = {"kind": "tiny", "ref": "tiny", "seed": seed}
    if options.get("quantization"):
        adapter = cls.from_pretrained(
            str(tiny_checkpoint(family, seed)), **{**options, "backend": "peft", "source": source}
        )
        adapter.name = f"{family}:tiny"
        return adapter
    model, proc = _BUILDERS[family](seed)
    return cls.create(model, proc, source=source, **options)


def build_spec(family: str, arg: str, **options: Any) -> Any:
    """The registry's ``FAMILY:tiny[@SEED]`` and ``FAMILY:smoke`` (the checkpoint named by
    ``DEEPSYNTH_SMOKE_MODEL`` when set, else the tiny model)."""
    if arg == "smoke":
        real = envs.DEEPSYNTH_SMOKE_MODEL
        if real:
            return load_engine(f"{family}:{real}", **options)
        arg = "tiny"
    seed = int(arg.partition("@")[2] or options.pop("seed", 0) or 0)
    return build_tiny(family, seed=seed, **options)
