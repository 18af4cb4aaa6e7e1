"""Shared logic of the vision-language OCR adapters (decoder-only VLMs; TrOCR overrides the batch parts).

One class, :class:`VLMAdapter`, implements :class:`deepsynth.models.base.ModelAdapter` for every family:

* answer-only supervision — the prompt (image tokens included) and padding are labelled -100, the answer
  and its end token are learned; a sample whose answer has no token is rejected (no all-masked batches);
* left-padded batched greedy/beam generation with ``finished`` (an end token was produced) per image;
* LoRA presets (``lora.py``), QLoRA / 8-bit loading (``loading.py``), backend choice auto|peft|unsloth;
* save/load (adapter in peft format, or a merged full model loadable with plain transformers), merge and a
  numerical parity check, with the peft reload bug worked around (``peft_io.py``).

Families subclass it and say how to build the prompt, which image kwargs to pass and where LoRA goes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from deepsynth.data.sample import SampleError
from deepsynth.envs import parse_bool
from deepsynth.models.base import ModelAdapter, Prediction, StopCheck, TextSink, TokenLogprob
from deepsynth.models.generation import GenerationConfig, UnsupportedGeneration
from deepsynth.models.registry import MODEL_CARD
from deepsynth.models.threads import respect_omp_thread_limit
from deepsynth.models.vlm import lora as lora_mod
from deepsynth.models.vlm.loading import from_pretrained_kwargs, is_quantized

if TYPE_CHECKING:
    import torch

    from deepsynth.data.sample import Sample

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ADAPTER_DIR = "adapter"
# options remembered in the model card and passed back on load
_CARD_OPTIONS = (
    "prompt",
    "max_length",
    "quantization",
    "dtype",
    "attn_implementation",
    "image_mode",
    "base_size",
    "image_size",
    "crop_mode",
    "seed",
)


class VLMAdapter(ModelAdapter):
    """A trainable vision-language OCR model behind the ModelAdapter protocol (see module docstring)."""

    family: ClassVar[str] = ""
    default_prompt: ClassVar[str] = ""
    lora_presets: ClassVar[dict[str, lora_mod.LoraPreset]] = {}
    # module paths kept in full precision for 8-bit loading (vision towers)
    int8_skip_modules: ClassVar[list[str]] = []
    # per-token keys returned by the processor that must be extended/padded like input_ids
    per_token_keys: ClassVar[tuple[str, ...]] = ("mm_token_type_ids", "token_type_ids")
    # added to loading errors (e.g. which checkpoint format the family needs)
    checkpoint_hint: ClassVar[str] = ""
    # modules whose inputs keep one row per image during generate(): a LoRA adapter placed only there can share
    # a batch with other adapters (``multi_lora``); vision towers regroup rows into tiles
    mixed_batch_modules: ClassVar[str] = r"(^|\.)language_model\."

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        source: dict[str, Any] | None = None,
        prompt: str | None = None,
        max_length: int = 4096,
        options: dict[str, Any] | None = None,
    ):
        respect_omp_thread_limit()
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.source = source or {}
        self.prompt = self.resolve_prompt(prompt)
        self.max_length = int(max_length)
        self.options = dict(options or {})
        self.backend = "peft"
        self.lora_spec: lora_mod.LoraSpec | None = None
        self.name = f"{self.family}:{self.source.get('ref', 'model')}"
        self._kbit_prepared = False

    # ------------------------------------------------------------------ family hooks
    def resolve_prompt(self, prompt: str | None) -> str:
        """Prompt aliases → text; None → the family default."""
        return prompt or self.default_prompt

    def prompt_text(self, prompt: str, n_images: int = 1) -> str:
        """The full text given to the processor for one image (image placeholder included)."""
        return prompt

    def image_kwargs(self, generation: GenerationConfig | None = None) -> dict[str, Any]:
        """Extra keyword arguments for the processor call (DeepSeek image modes, Qwen mm token types)."""
        return {}

    def encode_prompts(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        generation: GenerationConfig | None = None,
        padding_side: str = "left",
    ) -> dict[str, Any]:
        """Processor output for ``images`` each paired with ``prompt`` (padded on ``padding_side``)."""
        texts = [self.prompt_text(prompt) for _ in images]
        return self.processor(
            images=list(images),
            text=texts,
            return_tensors="pt",
            padding=True,
            padding_side=padding_side,
            **self.image_kwargs(generation),
        )

    def end_token_ids(self) -> list[int]:
        """Token ids that end an answer (appended after the target in training, stop generation)."""
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    # ------------------------------------------------------------------ training batch
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: Any) -> VLMAdapter:
        """Move the model (the trainer moves it to the accelerator's device); quantised models stay put."""
        if not is_quantized(self.model) and str(device) != str(self.device):
            self.model.to(device)
        return self

    def _target_ids(self, sample: Sample) -> list[int]:
        text = sample.text
        if not text or not text.strip():
            raise SampleError(sample.id, "empty transcription: nothing to supervise")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SampleError(sample.id, "transcription tokenises to no tokens: nothing to supervise")
        return list(ids) + self.end_token_ids()

    def collate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Prompt+answer token ids with labels only on the answer (+ end token), right-padded."""
        import torch

        if not samples:
            raise ValueError("collate() got an empty list of samples")
        images = [s.image for s in samples]
        targets = [self._target_ids(s) for s in samples]
        enc = self.encode_prompts(images, self.prompt, padding_side="right")
        mask = enc["attention_mask"].bool()
        rows, labels, extras = [], [], {k: [] for k in self.per_token_keys if k in enc}
        for i, (sample, tgt) in enumerate(zip(samples, targets, strict=True)):
            prompt_ids = enc["input_ids"][i][mask[i]].tolist()
            total = len(prompt_ids) + len(tgt)
            if total > self.max_length:
                raise SampleError(
                    sample.id,
                    f"prompt ({len(prompt_ids)} tokens incl. image) + answer ({len(tgt)}) = {total} "
                    f"tokens exceeds max_length={self.max_length}",
                )
            rows.append(prompt_ids + tgt)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + tgt)
            for k in extras:
                extras[k].append(enc[k][i][mask[i]].tolist() + [0] * len(tgt))
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
            return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

        batch: dict[str, Any] = {
            k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", *extras)
        }
        batch["input_ids"] = pad(rows, pad_id)
        batch["attention_mask"] = pad([[1] * len(r) for r in rows], 0)
        batch["labels"] = pad(labels, IGNORE_INDEX)
        for k, seqs in extras.items():
            batch[k] = pad(seqs, 0)
        return batch

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        dev = self.device
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(dev)
                if v.is_floating_point() and dtype is not None and dtype in (torch.float16, torch.bfloat16):
                    v = v.to(dtype)
            out[k] = v
        return out

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over answer tokens. Raises when no label is supervised (would give a fake 0)."""
        labels = batch.get("labels")
        if labels is None or int((labels != IGNORE_INDEX).sum()) == 0:
            raise ValueError(
                "batch has no supervised label (all -100): refusing to return a meaningless loss"
            )
        out = self.model(**self._to_device(batch))
        return out.loss

    def train_mode(self) -> None:
        self.model.train()

    def trainable_parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ LoRA / k-bit
    def prepare_for_training(self, cfg: Any = None) -> None:
        """k-bit preparation for quantised models and gradient checkpointing when asked (idempotent)."""
        gc = as_bool(self.options.get("gradient_checkpointing")) or as_bool(
            _find(cfg, "gradient_checkpointing")
        )
        if is_quantized(self.model) and not self._kbit_prepared:
            from peft import prepare_model_for_kbit_training

            self.model = prepare_model_for_kbit_training(
                self.model,
                use_gradient_checkpointing=gc,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
            self._kbit_prepared = True
        elif gc:
            self.enable_gradient_checkpointing()

    def enable_gradient_checkpointing(self) -> None:
        model = self.model
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable()
        else:  # pragma: no cover - older transformers
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        if hasattr(model, "config"):
            model.config.use_cache = False

    def apply_lora(self, settings: Any) -> None:
        """Wrap the model with LoRA per ``settings`` (LoraSettings or dict); no-op when disabled/None."""
        if not lora_mod.lora_enabled(settings):
            return
        if self.lora_spec is not None:
            raise RuntimeError(f"{self.family}: LoRA already applied")
        self.lora_spec = lora_mod.resolve_lora(settings, self.lora_presets, self.family)
        if is_quantized(self.model) and not self._kbit_prepared:
            self.prepare_for_training(None)
        requested = self.options.get("backend") or _find(settings, "backend")
        if requested == "unsloth" and self.backend != "unsloth":
            lora_mod.resolve_backend("unsloth")  # raises with the reason when unavailable here
            raise RuntimeError(
                f"{self.family}: backend 'unsloth' must be chosen when loading the model "
                "(model.options.backend: unsloth); this model was loaded with transformers"
            )
        if self.backend == "unsloth":  # pragma: no cover - needs CUDA + unsloth
            self._apply_lora_unsloth(self.lora_spec)
        else:
            from peft import get_peft_model

            self.model = get_peft_model(self.model, lora_mod.peft_config(self.lora_spec))
        n_train = sum(p.numel() for p in self.trainable_parameters())
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info(
            "%s LoRA (%s, preset=%s, r=%d): %d / %d parameters trainable",
            self.family,
            self.backend,
            self.lora_spec.preset,
            self.lora_spec.r,
            n_train,
            n_all,
        )
        if n_train == 0:
            raise RuntimeError(
                f"{self.family}: LoRA targets matched nothing ({self.lora_spec.target_modules})"
            )

    def _apply_lora_unsloth(self, spec: lora_mod.LoraSpec) -> None:  # pragma: no cover - GPU only
        from unsloth import FastVisionModel

        self.model = FastVisionModel.get_peft_model(
            self.model,
            finetune_vision_layers=spec.preset not in (None, "language-model"),
            finetune_language_layers=True,
            finetune_attention_modules=True,
            finetune_mlp_modules=True,
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            bias="none",
            use_gradient_checkpointing="unsloth" if self.options.get("gradient_checkpointing") else False,
        )

    @property
    def has_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    # ------------------------------------------------------------------ inference
    def generate_ids(
        self,
        images: Sequence[Image.Image],
        gen: GenerationConfig,
        prompt: str,
        **generate_kw: Any,
    ) -> tuple[Any, int, list[int]]:
        """(generate's output, the padded prompt length, each row's prompt tokens incl. image tokens);
        ``generate_kw`` goes to ``generate`` as is (a streamer, stopping criteria)."""
        import torch

        enc = self._to_device(dict(self.encode_prompts(images, prompt, gen, padding_side="left")))
        mask = enc.get("attention_mask")
        read = mask.sum(1).tolist() if mask is not None else [enc["input_ids"].shape[1]] * len(images)
        kw = gen.to_hf_kwargs()
        ends = self.end_token_ids()
        kw["eos_token_id"] = ends if len(ends) > 1 else (ends[0] if ends else None)
        kw["pad_token_id"] = self.tokenizer.pad_token_id
        with torch.inference_mode():
            out = self.model.generate(
                **enc, **kw, **generate_kw, return_dict_in_generate=True, output_scores=True
            )
        return out, enc["input_ids"].shape[1], [int(n) for n in read]

    def _token_logprobs(self, out: Any, gen: GenerationConfig) -> Any:
        """Log-probability of every generated token (greedy/sampling), or None (beam search, no scores)."""
        if gen.num_beams > 1 or not getattr(out, "scores", None):
            return None
        import torch

        with torch.inference_mode():
            return self.model.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            ).float()

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read a batch of images (left-padded batched generation; greedy by default)."""
        if not images:
            return []
        return self._read(images, generation or GenerationConfig())

    def recognize_stream(
        self,
        image: Image.Image,
        generation: GenerationConfig | None,
        emit: TextSink,
        stop: StopCheck | None = None,
    ) -> Prediction:
        """Read one image, emitting settled pieces of the answer as ``generate`` produces them
        (:class:`~deepsynth.models.base.StreamingEngine`). Beam search keeps several answers until the end:
        with ``num_beams`` > 1 nothing is emitted (the caller sends the whole text)."""
        from transformers import StoppingCriteriaList

        from deepsynth.models.vlm.streaming import PieceStreamer, StopWhen

        gen = generation or GenerationConfig()
        extra: dict[str, Any] = {}
        if stop is not None:
            extra["stopping_criteria"] = StoppingCriteriaList([StopWhen(stop)])
        if gen.num_beams == 1:
            extra["streamer"] = PieceStreamer(
                lambda ids: self.postprocess(ids)[0],
                emit,
                set(self.end_token_ids()),
                self.tokenizer.pad_token_id,
            )
        (pred,) = self._read([image], gen, **extra)
        return pred

    def _read(
        self,
        images: Sequence[Image.Image],
        gen: GenerationConfig,
        **generate_kw: Any,
    ) -> list[Prediction]:
        prompt = self.resolve_prompt(gen.prompt) if gen.prompt else self.prompt
        was_training = self.model.training
        self.model.eval()
        try:  # retries (gen.retry_truncated) are OCRService's job: one policy for every engine
            return self._decode(*self.generate_ids(images, gen, prompt, **generate_kw), gen)
        finally:
            self.model.train(was_training)

    def _decode(
        self, out: Any, prompt_len: int, prompt_tokens: list[int], gen: GenerationConfig
    ) -> list[Prediction]:
        """Text, ``finished`` (an end token came) and confidence = exp(mean token log-probability)."""
        import math

        ends = set(self.end_token_ids())
        pad = self.tokenizer.pad_token_id
        logprobs = self._token_logprobs(out, gen)
        if gen.top_logprobs is not None and logprobs is None:
            raise UnsupportedGeneration(
                f"{self.family}: token log-probabilities need greedy or sampled decoding (num_beams=1, "
                f"got {gen.num_beams})",
                "logprobs",
            )
        preds = []
        for i, row in enumerate(out.sequences[:, prompt_len:].tolist()):
            finished = False
            toks, used, steps = [], [], []
            for j, t in enumerate(row):
                if t in ends:
                    finished = True
                    used.append(j)
                    break
                if t == pad and pad not in ends:
                    continue
                toks.append(t)
                used.append(j)
                steps.append(j)
            confidence = None
            if logprobs is not None and used:
                confidence = math.exp(float(logprobs[i, used].mean()))
            elif getattr(out, "sequences_scores", None) is not None:
                confidence = math.exp(float(out.sequences_scores[i]))
            text, lines = self.postprocess(toks)
            preds.append(
                Prediction(
                    text=text,
                    confidence=confidence,
                    finished=finished,
                    num_tokens=len(toks),
                    prompt_tokens=prompt_tokens[i],
                    lines=lines,
                    meta={"family": self.family},
                    logprobs=None
                    if gen.top_logprobs is None
                    else self._logprob_entries(out, gen, logprobs, i, row, steps),
                )
            )
        return preds

    def _logprob_entries(
        self, out: Any, gen: GenerationConfig, logprobs: Any, i: int, row: list[int], steps: list[int]
    ) -> list[TokenLogprob]:
        """Row ``i``'s token and its log-probability at each of ``steps``, with the ``gen.top_logprobs`` most
        likely tokens of that step (log-softmax of the scores ``generate`` picked from, as for the token)."""
        import math

        import torch

        def text(token_id: int) -> str:
            return self.tokenizer.decode([token_id])

        entries = []
        for j in steps:
            top: list[tuple[str, float]] = []
            if gen.top_logprobs:
                values, ids = torch.log_softmax(out.scores[j][i].float(), -1).topk(gen.top_logprobs)
                top = [
                    (text(int(t)), float(v))
                    for v, t in zip(values.tolist(), ids.tolist(), strict=True)
                    if math.isfinite(v)
                ]
            entries.append(TokenLogprob(text(row[j]), float(logprobs[i, j]), top))
        return entries

    def postprocess(self, token_ids: list[int]) -> tuple[str, list[dict[str, Any]]]:
        """Generated ids → (text, per-region lines). Families with structured output override this."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip(), []

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits for a collated batch (no grad, eval mode) — used by parity checks."""
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                b = {k: v for k, v in self._to_device(batch).items() if k != "labels"}
                return self.model(**b).logits.float().cpu()
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ save / load / export
    def card(self, fmt: str) -> dict[str, Any]:
        opts = {k: self.options[k] for k in _CARD_OPTIONS if self.options.get(k) is not None}
        opts["prompt"] = self.prompt
        opts["max_length"] = self.max_length
        return {
            "family": self.family,
            "format": fmt,
            "source": self.source,
            "options": opts,
            "lora": vars(self.lora_spec) if self.lora_spec else None,
        }

    def save(self, path: str | Path) -> None:
        """Adapter in peft format (+ reference to the base) when LoRA is on, else the full model."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.has_lora:
            self.model.save_pretrained(str(path / ADAPTER_DIR))
            fmt = "lora"
        else:
            self.model.save_pretrained(str(path))
            fmt = "full"
        self.processor.save_pretrained(str(path))
        (path / MODEL_CARD).write_text(json.dumps(self.card(fmt), indent=2, default=str))

    def merge(self) -> None:
        """Fold LoRA into the base weights in place (no-op without LoRA)."""
        if self.has_lora:
            self.model = self.model.merge_and_unload()
            self.lora_spec = None

    def export_merged(self, path: str | Path) -> Path:
        """Merge LoRA and write a full model (``save_pretrained``) loadable with plain transformers."""
        if is_quantized(self.model):
            raise RuntimeError(
                "cannot export a merged model from quantised weights; reload the base in "
                "bf16/fp32 with the saved adapter (quantization=null), then export"
            )
        self.merge()
        self.save(path)
        return Path(path)

    @classmethod
    def model_class(cls) -> Any:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    @classmethod
    def load_processor(cls, ref: str, **kw: Any) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(ref, backend="pil", **kw)

    @classmethod
    def from_pretrained(cls, ref: str, **options: Any) -> VLMAdapter:
        """Load a hub id / local checkpoint (full model) with device, dtype, quantization, attention options."""
        if (
            lora_mod.resolve_backend(options.get("backend"), cls.family) == "unsloth"
        ):  # pragma: no cover - GPU
            return cls._from_pretrained_unsloth(ref, **options)
        kw = from_pretrained_kwargs(
            quantization=options.get("quantization"),
            dtype=options.get("dtype"),
            device=options.get("device"),
            attn=options.get("attn_implementation"),
            skip_modules=cls.int8_skip_modules,
            trust_remote_code=as_bool(options.get("trust_remote_code")),
        )
        try:
            model = cls.model_class().from_pretrained(ref, **kw)
        except ValueError as exc:
            if not cls.checkpoint_hint:
                raise
            raise ValueError(f"{ref}: {exc}\n{cls.checkpoint_hint}") from exc
        processor = cls.load_processor(ref)
        source = options.pop("source", None) or {"kind": "pretrained", "ref": ref}
        return cls.create(model, processor, source=source, **options)

    @classmethod
    def _from_pretrained_unsloth(cls, ref: str, **options: Any) -> VLMAdapter:  # pragma: no cover - GPU only
        lora_mod.resolve_backend("unsloth")  # raises with the reason when unavailable
        from unsloth import FastVisionModel

        model, _ = FastVisionModel.from_pretrained(
            ref,
            load_in_4bit=options.get("quantization") == "4bit",
            use_gradient_checkpointing="unsloth" if options.get("gradient_checkpointing") else False,
        )
        adapter = cls.create(
            model, cls.load_processor(ref), source={"kind": "pretrained", "ref": ref}, **options
        )
        adapter.backend = "unsloth"
        return adapter

    @classmethod
    def create(cls, model: Any, processor: Any, *, source: dict[str, Any], **options: Any) -> VLMAdapter:
        """Construct the adapter from a model + processor and the user options (prompt, max_length, ...)."""
        adapter = cls(
            model,
            processor,
            source=source,
            prompt=options.get("prompt"),
            max_length=int(options.get("max_length") or 4096),
            options=options,
        )
        if as_bool(options.get("gradient_checkpointing")) and not is_quantized(model):
            adapter.enable_gradient_checkpointing()
        return adapter

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> VLMAdapter:
        """Load a directory written by :meth:`save` (LoRA reloaded exactly, see ``peft_io``) or a hub/local ref."""
        path = Path(path)
        card_file = path / MODEL_CARD
        if not card_file.is_file():
            return cls.from_pretrained(str(path), **options)
        card = json.loads(card_file.read_text())
        if card.get("family") != cls.family:
            raise ValueError(f"{path} holds a {card.get('family')!r} model, not {cls.family!r}")
        opts = {**card.get("options", {}), **options}
        if card["format"] == "full":
            adapter = cls.from_pretrained(str(path), **opts)
            adapter.source = card.get("source", {})
            return adapter
        from deepsynth.models.vlm.peft_io import load_lora

        base = cls.build_source(card.get("source", {}), **opts)
        base.model = load_lora(base.model, path / ADAPTER_DIR, is_trainable=bool(options.get("trainable")))
        if card.get("lora"):
            base.lora_spec = lora_mod.LoraSpec(**card["lora"])
        return base

    @classmethod
    def build_source(cls, source: dict[str, Any], **options: Any) -> VLMAdapter:
        """Rebuild the base model a saved adapter refers to."""
        if source.get("kind") == "tiny":  # a tiny test model: rebuilt through the registry's tiny spec
            from deepsynth.models.registry import load_engine

            spec = f"{cls.family}:tiny@{int(source.get('seed', 0))}"
            return load_engine(spec, **{k: v for k, v in options.items() if k != "seed"})  # type: ignore[return-value]
        ref = source.get("ref")
        if not ref:
            raise ValueError(f"saved adapter has no base reference: {source}")
        return cls.from_pretrained(ref, **options)


def as_bool(value: Any) -> bool:
    """Booleans from YAML, CLI strings ("true", "1", "yes", "false", "0", "no") or None."""
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "null"):
            return False
        return parse_bool(value)  # the one truthy parser (deepsynth.envs)
    return bool(value)


def _find(obj: Any, name: str) -> Any:
    """Attribute/key ``name`` of obj or of obj.model / obj.model.options / obj.train (trainer configs vary)."""
    if obj is None:
        return None
    for holder in (obj, getattr(obj, "model", None), getattr(getattr(obj, "model", None), "options", None)):
        if holder is None:
            continue
        if isinstance(holder, dict) and name in holder:
            return holder[name]
        if not isinstance(holder, dict) and hasattr(holder, name):
            return getattr(holder, name)
    return None


def make_build(adapter_cls: type[VLMAdapter]) -> Any:
    """Registry factory ``build(arg, **options)``: a saved directory or hub id → :meth:`VLMAdapter.load`.

    (``tiny``, ``tiny@SEED`` and ``smoke`` are resolved by the registry, see ``registry.TINY_MODELS``.)
    """

    def build(arg: str | None = None, **options: Any) -> VLMAdapter:
        if arg is None:
            raise ValueError(
                f"{adapter_cls.family}: give a checkpoint, e.g. {adapter_cls.family}:PATH_OR_HUB_ID "
                f"(or {adapter_cls.family}:tiny for a random tiny model)"
            )
        return adapter_cls.load(arg, **options)

    build.__doc__ = f"Build a {adapter_cls.family} adapter from a saved directory or a hub id."
    return build
