"""The embedded PP-OCRv6-small recogniser as a trainable DeepSynth model (:class:`ModelAdapter`).

``PPOCRAdapter.from_shipped()`` converts the ONNX recogniser in the rapidocr wheel into transformers'
``PPOCRV6SmallRecForTextRecognition`` (see convert.py; ~0.3 s plus imports). Training uses CTC on logits
taken before the model's softmax; every BatchNorm stays in eval mode (:meth:`train_mode`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from deepsynth.data.sample import Sample, SampleError
from deepsynth.models.base import ModelAdapter, Prediction
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.ppocr import checkpointing
from deepsynth.models.ppocr import lora as lora_utils
from deepsynth.models.ppocr.batching import line_probabilities, recognize_in_batches
from deepsynth.models.ppocr.charset import Charset, normalize_text
from deepsynth.models.ppocr.convert import (
    REC_ONNX,
    apply_saved_layer_norm_eps,
    build_config,
    convert_shipped,
    shipped_model_path,
)
from deepsynth.models.ppocr.ctc import ctc_loss, min_frames, pack_targets
from deepsynth.models.ppocr.lm import LMDecoder
from deepsynth.models.ppocr.preprocess import (
    HEIGHT,
    MIN_WIDTH,
    fit_frames,
    preprocess_batch,
    to_bgr,
)
from deepsynth.models.registry import MODEL_CARD
from deepsynth.models.threads import respect_omp_thread_limit

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import PPOCRV6SmallRecForTextRecognition

FAMILY = "ppocr"
LORA_DIR = "lora"


class PPOCRAdapter(ModelAdapter):
    """PP-OCRv6-small recogniser: collate / CTC loss / greedy recognition / save / load / charset / LoRA."""

    family = FAMILY

    def __init__(
        self,
        model: PPOCRV6SmallRecForTextRecognition,
        charset: Charset,
        *,
        name: str = "ppocr",
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        added_chars: Sequence[str] = (),
        source: str = "",
        gradient_checkpointing: bool | str = "off",
    ):
        respect_omp_thread_limit()
        if model.config.head_out_channels != charset.num_classes:
            raise ValueError(
                f"model has {model.config.head_out_channels} output classes, charset {charset.num_classes}"
            )
        self.model: torch.nn.Module = model.to(torch.device(device)).eval()
        self.charset = charset
        self.name = name
        self.batch_size = batch_size
        self.added_chars: list[str] = list(added_chars)
        self.source = source
        self.lora_config: dict[str, Any] | None = None
        self.lm_decoder: LMDecoder | None = None  # read with a character LM (fit_lm_decoder); None = greedy
        self.pruned_classes = 0  # output classes dropped by prune_charset (their head rows are gone)
        self.stretched_ids: set[str] = set()  # training lines widened to fit their text (logged once each)
        self.gradient_checkpointing = checkpointing.parse_mode(gradient_checkpointing)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_shipped(cls, onnx_path: str | Path | None = None, **kwargs: Any) -> PPOCRAdapter:
        """The PP-OCRv6-small recogniser shipped in the rapidocr wheel, converted to PyTorch."""
        path = Path(onnx_path) if onnx_path else shipped_model_path(REC_ONNX)
        model, charset, _ = convert_shipped(path)
        return cls(model, charset, source=f"onnx:{path.name}", **kwargs)

    @classmethod
    def tiny_random(cls, charset: str | Sequence[str], seed: int = 0, **kwargs: Any) -> PPOCRAdapter:
        """A small random-weight model with the same architecture (for fast unit tests; not for OCR)."""
        from transformers import PPOCRV6SmallRecForTextRecognition

        chars = list(dict.fromkeys(charset))
        if " " not in chars:
            chars.append(" ")
        cs = Charset(chars)
        backbone = {
            "model_type": "pp_lcnet_v4",
            "stem_channels": [3, 4, 8],
            "block_configs": [
                [[3, 8, 8, 1, True]],
                [[3, 8, 8, 1, False]],
                [[3, 8, 16, [2, 1], False]],
                [[3, 16, 32, [2, 1], True]],
            ],
            "out_features": ["stage4"],
        }
        config = build_config(
            cs.num_classes, hidden_size=16, num_attention_heads=2, depth=1, backbone_config=backbone
        )
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = PPOCRV6SmallRecForTextRecognition(config)
            for module in model.modules():  # transformers' N(0, 0.02) init makes the activations vanish here
                if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                    module.reset_parameters()
        return cls(model, cs, name="ppocr-tiny", source=f"tiny_random(seed={seed})", **kwargs)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> PPOCRAdapter:
        """Load a directory written by :meth:`save` (weights, charset, optional LoRA adapter)."""
        from transformers import PPOCRV6SmallRecForTextRecognition

        path = Path(path)
        card_path = path / MODEL_CARD
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path} not found: {path} is not a model saved by DeepSynth")
        card = json.loads(card_path.read_text())
        if card.get("family") != FAMILY:
            raise ValueError(f"{path} holds a {card.get('family')!r} model, not {FAMILY!r}")
        charset = Charset.load(path)
        model = PPOCRV6SmallRecForTextRecognition.from_pretrained(str(path))
        apply_saved_layer_norm_eps(model)
        adapter = cls(
            model,
            charset,
            added_chars=card.get("added_chars", []),
            source=str(path),
            name=f"ppocr:{path}",
            **kwargs,
        )
        if (path / LORA_DIR).is_dir():
            adapter.model = lora_utils.load_lora(
                adapter.model, path / LORA_DIR
            ).eval()  # peft leaves it in train
            adapter.lora_config = card.get("lora")
        adapter.lm_decoder = LMDecoder.load(path)
        return adapter

    def save(self, path: str | Path) -> None:
        """Write weights (``save_pretrained``), ``charset.json``, ``deepsynth_model.json`` and a LoRA adapter."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        core = self.core
        if lora_utils.has_lora(self.model):
            core.save_pretrained(str(path), state_dict=lora_utils.base_state_dict(core))
            lora_utils.save_lora(self.model, path / LORA_DIR)
        else:
            core.save_pretrained(str(path))
        self.charset.save(path)
        if self.lm_decoder is not None:
            self.lm_decoder.save(path)
        card = {
            "family": FAMILY,
            "architecture": "PPOCRV6SmallRecForTextRecognition",
            "source": self.source,
            "num_classes": self.charset.num_classes,
            "added_chars": self.added_chars,
            "lora": self.lora_config,
            "preprocess": {"height": HEIGHT, "min_width": MIN_WIDTH, "color": "BGR", "norm": "x/127.5-1"},
        }
        (path / MODEL_CARD).write_text(json.dumps(card, ensure_ascii=False, indent=2))

    # ------------------------------------------------------------------ model pieces
    @property
    def device(self) -> torch.device:
        """Where the model's weights are (follows ``adapter.model.to(...)`` by a trainer)."""
        return next(self.model.parameters()).device

    @property
    def core(self) -> PPOCRV6SmallRecForTextRecognition:
        """The transformers model (under a LoRA wrapper if one is applied)."""
        return lora_utils.unwrap(self.model)

    def preprocess(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """The one preprocessing for training and inference (rapidocr's resize_norm_img), as a tensor."""
        return torch.from_numpy(preprocess_batch(images)).to(self.device)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[batch, frames, classes]`` logits: backbone → head encoder → final linear (no softmax)."""
        core = self.core
        features = core.model(pixel_values).last_hidden_state
        hidden = core.head.encoder(features).last_hidden_state
        return core.head.head(hidden)

    def prepare_for_training(self, cfg: Any = None) -> None:
        """Same math, less memory: the converter's identity BatchNorms as bias adds (frozen_norm.py) and
        activation checkpointing of the backbone (checkpointing.py; ``model.options.gradient_checkpointing``
        of ``cfg``, else the adapter's own setting)."""
        from deepsynth.models.ppocr.frozen_norm import identity_norms_as_bias

        identity_norms_as_bias(self.model)
        self.lm_decoder = None  # validation during training reads greedily; fit_lm_decoder refits after
        options = getattr(getattr(cfg, "model", None), "options", None) or {}
        if "gradient_checkpointing" in options:
            self.gradient_checkpointing = checkpointing.parse_mode(options["gradient_checkpointing"])
        checkpointing.enable(self.core, self.gradient_checkpointing)

    def train_mode(self) -> None:
        """Train mode with every BatchNorm kept in eval (their folded statistics must not move)."""
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    def eval_mode(self) -> None:
        self.model.eval()

    # ------------------------------------------------------------------ training
    def encode_text(self, sample_id: str, text: str) -> list[int]:
        """Class ids for a sample's text; SampleError if nothing in it is trainable."""
        ids, _dropped = self.charset.encode(text)
        if not ids:
            if not normalize_text(text):
                raise SampleError(sample_id, "empty text", kind="empty_text")
            raise SampleError(sample_id, f"no trainable character in {text[:40]!r}", kind="other")
        return ids

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Samples → ``pixel_values`` + packed CTC targets. Raises SampleError naming the first bad sample."""
        if not samples:
            raise ValueError("collate needs at least one sample")
        bgrs, targets, dropped, stretched = [], [], 0, 0
        for s in samples:
            try:
                bgr = to_bgr(s.image)
            except SampleError:
                raise
            except Exception as exc:
                raise SampleError(
                    s.id, f"unreadable image ({type(exc).__name__}: {exc})", kind="corrupt_image"
                ) from exc
            if min(bgr.shape[:2]) < 2:
                raise SampleError(
                    s.id, f"image too small ({bgr.shape[1]}x{bgr.shape[0]})", kind="corrupt_image"
                )
            ids = self.encode_text(s.id, s.text)
            dropped += len(self.charset.encode(s.text)[1])
            try:
                fitted = fit_frames(bgr, min_frames(ids))
            except ValueError as exc:
                raise SampleError(s.id, str(exc), kind="other") from exc
            if fitted is not bgr:
                stretched += 1
                if s.id not in self.stretched_ids:
                    self.stretched_ids.add(s.id)
                    log.info(
                        "%s: widened %d -> %d px so its text fits the CTC frames",
                        s.id,
                        bgr.shape[1],
                        fitted.shape[1],
                    )
            bgrs.append(fitted)
            targets.append(ids)
        flat, lengths = pack_targets(targets)
        return {
            "pixel_values": self.preprocess(bgrs),
            "targets": flat,
            "target_lengths": lengths,
            "ids": [s.id for s in samples],
            "dropped_chars": dropped,
            "stretched": stretched,
        }

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean CTC loss (blank 0, zero_infinity) on the logits of a :meth:`collate` batch."""
        logits = self.logits(batch["pixel_values"].to(self.device))
        return ctc_loss(logits, batch["targets"].to(self.device), batch["target_lengths"].to(self.device))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Softmax probabilities ``[batch, frames, classes]`` for one padded batch (as the ONNX model gives)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return torch.softmax(self.logits(self.preprocess(images)).float(), dim=-1).cpu().numpy()
        finally:
            if was_training:
                self.train_mode()

    def recognize(
        self, images: Sequence[Image.Image | np.ndarray], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Greedy CTC read of line images; batches by similar width (like rapidocr); confidence = mean max prob."""
        return recognize_in_batches(
            images, self.probabilities, self.charset, self.batch_size, generation, self.lm_decoder
        )

    # ------------------------------------------------------------------ trainer hooks
    def extend_charset(self, texts_or_chars: Iterable[str] | str, *, bias_offset: float = -4.0) -> list[str]:
        """Add output classes for characters of ``texts_or_chars`` the charset lacks; returns the added ones.

        A new class starts as a copy of a similar existing class (``ſ`` ← ``s`` via NFKD, combining ``ͤ`` ← ``e``,
        ``¬`` ← ``-``) or, when there is none, of the mean of all character classes; its bias is lowered by
        ``bias_offset`` so existing predictions do not change until it is trained.
        """
        from deepsynth.models.ppocr.extend import grow_head

        if lora_utils.has_lora(self.model):
            raise RuntimeError("extend the charset before applying LoRA (the head's shape would change)")
        texts = [texts_or_chars] if isinstance(texts_or_chars, str) else list(texts_or_chars)
        new = [ch for ch in self.charset.missing(texts) if ch.strip()]
        if not new:
            return []
        bases = [self.charset.base_class(ch) for ch in new]
        grow_head(self.core, bases, bias_offset=bias_offset)
        self.charset = Charset([*self.charset.chars, *new])
        self.added_chars.extend(new)
        return new

    def prune_charset(self, texts: Iterable[str]) -> int:
        """Drop the CJK and emoji output classes when ``texts`` use none; returns how many were dropped.

        The shipped head has 18,710 classes, about 17,000 of them CJK, Hangul, Kana or emoji: on Latin, Greek
        or Cyrillic text they are dead weight (43% of the parameters, a quarter of a training step).
        """
        from deepsynth.models.ppocr.extend import select_head

        if lora_utils.has_lora(self.model):
            raise RuntimeError("prune the charset before applying LoRA (the head's shape would change)")
        keep = self.charset.without_cjk_or_emoji(texts)
        if not keep or len(keep) == self.charset.num_classes:
            return 0
        select_head(self.core, keep)
        dropped = self.charset.num_classes - len(keep)
        self.charset = Charset([self.charset.chars[i - 1] for i in keep[1:]])
        self.pruned_classes += dropped
        return dropped

    def fit_lm_decoder(
        self,
        texts: Sequence[str],
        val_images: Sequence[Image.Image],
        score: Callable[[list[str]], float],
        settings: Any,
        save_to: str | Path | None = None,
    ) -> dict[str, Any]:
        """Fit a character LM on ``texts`` and keep the ``settings.alphas`` × ``settings.betas`` weights that
        score best on the validation lines, or greedy reading when none beats it. The frames' probabilities
        are computed once (only the columns beam search uses are kept)."""
        decoder = LMDecoder.fit(texts, order=settings.order, beam=settings.beam)
        greedy: list[str] = [""] * len(val_images)
        reduced: list[tuple[np.ndarray, list[str]] | None] = [None] * len(val_images)
        for i, probs in line_probabilities(val_images, self.probabilities, self.batch_size):
            greedy[i] = "".join(ch for ch, _ in self.charset.emitted(probs[None])[0])
            reduced[i] = decoder.reduce(probs, self.charset)
        tried = [{"alpha": 0.0, "beta": 0.0, "greedy": True, "score": score(greedy)}]
        for alpha in settings.alphas:
            for beta in settings.betas:
                d = decoder.with_weights(alpha, beta)
                hyps = ["".join(ch for ch, _ in d.read(*r)) for r in reduced if r is not None]
                tried.append({"alpha": alpha, "beta": beta, "greedy": False, "score": score(hyps)})
        best = min(tried, key=lambda t: t["score"])  # the first of equals: greedy wins ties
        self.lm_decoder = None if best["greedy"] else decoder.with_weights(best["alpha"], best["beta"])
        if save_to is not None:
            LMDecoder.remove(save_to)
            if self.lm_decoder is not None:
                self.lm_decoder.save(save_to)
        return {"chosen": best, "tried": tried, "order": settings.order, "texts": len(decoder.texts)}

    def apply_lora(self, lora: Any) -> None:
        """Wrap the recogniser with peft LoRA (settings duck-typed: r, alpha, dropout, targets)."""
        if lora_utils.has_lora(self.model):
            raise RuntimeError("LoRA is already applied to this model")
        self.model, self.lora_config = lora_utils.apply_lora(
            self.model, lora, train_head=bool(self.added_chars) or bool(self.pruned_classes)
        )

    def merge_lora(self) -> None:
        """Fold LoRA weights into the base model (for export / fast inference)."""
        if lora_utils.has_lora(self.model):
            self.model = lora_utils.merge(self.model)
            self.lora_config = None

    def export_onnx(self, path: str | Path, **kwargs: Any) -> Path:
        """Export logits→softmax to ONNX (dynamic batch + width) with the charset in its metadata."""
        from deepsynth.models.ppocr.export import export_onnx

        return export_onnx(self, path, **kwargs)


_BUILD_OPTIONS = {"batch_size", "device", "gradient_checkpointing"}


def build(arg: str | None = None, **kwargs: Any) -> PPOCRAdapter:
    """Registry factory: ``ppocr`` → the shipped model; ``ppocr:PATH`` → a saved model directory
    (or an ``.onnx`` recogniser file to convert). Options: batch_size, device (default: cuda when available),
    gradient_checkpointing (training only: off | stages | blocks, true = blocks)."""
    unknown = set(kwargs) - _BUILD_OPTIONS
    if unknown:
        raise TypeError(f"ppocr: unknown options {sorted(unknown)}; known: {sorted(_BUILD_OPTIONS)}")
    kwargs.setdefault(
        "device", "cuda" if torch.cuda.is_available() else "cpu"
    )  # serve/eval on the GPU if any
    if not arg or arg in ("shipped", "default"):
        return PPOCRAdapter.from_shipped(**kwargs)
    if arg.endswith(".onnx"):
        return PPOCRAdapter.from_shipped(arg, **kwargs)
    return PPOCRAdapter.load(arg, **kwargs)
