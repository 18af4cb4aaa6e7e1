"""Every training knob in one visible place: ``TrainConfig`` and its sections.

Loaded from YAML + ``key=value`` overrides with :func:`deepsynth.config.load_config`::

    cfg = load_config(TrainConfig, "configs/ppocr_finetune.yaml", ["optim.lr=5e-5", "max_steps=200"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepsynth.config import ConfigError
from deepsynth.data.line_augment import LineAugment
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.lora_presets import DEFAULT_ALPHA, DEFAULT_RANK


@dataclass
class ModelSettings:
    """Which model to train: a registry family, its path/hub id and extra factory kwargs."""

    family: str = "ppocr"
    path: str | None = None  # None = the family's default (for "ppocr": the recogniser shipped in rapidocr)
    options: dict[str, Any] = field(default_factory=dict)  # kwargs for the family's registry factory
    extend_charset: bool = (
        True  # add characters of the training texts the model lacks (adapter.extend_charset)
    )
    prune_charset: bool = (
        False  # drop output classes of scripts the training texts never use (adapter.prune_charset)
    )
    freeze: list[str] = field(
        default_factory=list
    )  # module paths whose parameters do not train (e.g. the stem)


@dataclass
class DataSettings:
    """Where samples come from and how they are split (see deepsynth.data.open_sources / SampleFilter)."""

    train: list[str] = field(default_factory=list)  # source specs: "name=path[:image_root]" or a path
    eval: list[str] | None = None  # None = the `eval_split` of the train sources
    train_split: str | None = (
        "auto"  # auto = every sample when `eval` is given, else "train"; None = every sample
    )
    eval_split: str | None = "val"
    split_key: str = "page_id"  # group key for splits: page_id | subset | id | writer | any manifest key
    split_ratios: tuple[float, float, float] = (
        0.9,
        0.1,
        0.0,
    )  # train / val / test (a test share is unused here)
    split_seed: int = 0
    languages: list[str] | None = None
    subsets: list[str] | None = None
    doc_types: list[str] | None = None  # document types (manifest `doc_type`, else `subset`)
    levels: list[str] | None = None
    exclude_flags: list[str] = field(default_factory=lambda: ["has_untranscribed"])
    limit: int | None = None  # cap on training samples (after filtering)
    eval_limit: int | None = 200  # cap on evaluation samples
    shuffle: bool = True
    group_by_length: bool = False  # batch lines of similar width together (less padding, faster steps)


@dataclass
class OptimSettings:
    """AdamW with linear warmup then cosine/linear/constant decay to ``min_lr_ratio * lr``."""

    name: str = (
        "auto"  # auto (paged 8-bit AdamW with CUDA + bitsandbytes, else AdamW) | adamw | paged_adamw_8bit
    )
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = (
        0.0  # > 0: warm up over this share of the planned steps (follows a time budget's plan)
    )
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; None = off

    def __post_init__(self) -> None:
        if self.name not in ("auto", "adamw", "paged_adamw_8bit"):
            raise ConfigError(f"optim.name must be auto|adamw|paged_adamw_8bit, got {self.name!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"optim.schedule must be cosine|linear|constant, got {self.schedule!r}")


@dataclass
class LoraSettings:
    """LoRA adapters (peft). ``targets`` is a module-name list or a preset name (deepsynth.models.lora_presets)."""

    enabled: bool = False
    r: int = DEFAULT_RANK
    alpha: int = DEFAULT_ALPHA
    dropout: float = 0.0
    targets: list[str] | str = "all-linear"
    target_parameters: list[str] | None = None  # fused 3-D parameters (e.g. DeepSeek-V2 experts)
    preset: str | None = None  # family preset, e.g. "language-model" or "all-linear"


@dataclass
class EvalSettings:
    """Evaluation during training: CER/WER on the eval split, early stopping and best checkpoint by ``metric``."""

    every_steps: int = 50  # 0 = only at the end
    times: int | None = None  # evaluations per run, spread over the planned steps (overrides every_steps)
    batch_size: int = 16
    normalize: str = "none"  # deepsynth.evaluation.normalize profile applied to refs and hyps
    metric: str = "cer"  # lower is better: cer | wer
    num_examples: int = 4  # sample predictions logged with tracker.log_text
    patience: int | None = None  # evaluations without improvement before stopping; None = never stop early
    min_delta: float = 0.0
    at_start: bool = True  # evaluate before the first step (the "before" number)


@dataclass
class CheckpointSettings:
    """Atomic, verified checkpoints: keep the last ``keep_last`` plus ``best`` (by the eval metric)."""

    every_steps: int = 100  # 0 = only at the end
    times: int | None = None  # checkpoints per run, spread over the planned steps (overrides every_steps)
    keep_last: int = 2
    save_best: bool = True
    save_final: bool = True
    push_to_hub: str | None = (
        None  # a Hub repo id ("org/name"): upload best (else final) at the end; off by default
    )
    hub_private: bool = True


@dataclass
class EMASettings:
    """Exponential moving average of the trainable weights (training/ema.py): validation, ``best`` and ``final``
    use the averaged weights. The decay after n updates is ``min(decay, (1 + n) / (10 + n))`` (a warm-up)."""

    decay: float = 0.0  # 0 = off; e.g. 0.999 averages over roughly the last 1,000 steps

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1) (0 = off), got {self.decay!r}")


@dataclass
class LMSettings:
    """Reading with a character language model fitted on the training texts (models/ppocr/lm.py). After
    training, its weights are chosen on the validation lines from ``alphas`` × ``betas``; plain greedy reading
    stays when none of them lowers the validation CER. Families without LM reading ignore it."""

    enabled: bool = False
    order: int = 6  # characters of context + 1
    alphas: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])  # LM weight candidates
    betas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # per-character bonus candidates
    beam: int = 10

    def __post_init__(self) -> None:
        if self.order < 1 or self.beam < 1:
            raise ConfigError(f"lm.order and lm.beam must be >= 1, got {self.order} and {self.beam}")
        if not self.alphas or not self.betas or any(a < 0 for a in self.alphas):
            raise ConfigError(
                f"lm.alphas (>= 0) and lm.betas need a value each, got {self.alphas} and {self.betas}"
            )


@dataclass
class TrainConfig:
    """One training run. Every field can be overridden as ``key=value`` (``optim.lr=5e-5``)."""

    output_dir: str = "runs/train"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    augment: LineAugment = field(default_factory=LineAugment.off)  # seeded training-image augmentation
    ema: EMASettings = field(default_factory=EMASettings)  # moving average of the weights (off by default)
    lm: LMSettings = field(default_factory=LMSettings)  # read with a character LM (off by default)
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int | None = None  # optimizer steps; the first of max_steps / epochs / max_minutes stops
    # (none of the three set = 1 epoch)
    epochs: float | None = None
    max_minutes: float | None = None  # wall-clock budget for training (evaluation included)
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp32) | fp32 | bf16 | fp16
    seed: int = 0
    deterministic: bool = True
    freeze_batchnorm: bool = True  # call adapter.train_mode() (BatchNorm stays in eval) instead of .train()
    num_workers: int = 0  # DataLoader workers preparing batches (0 = in the training process)
    num_threads: int | None = None  # torch intra-op threads (None = torch's default; 1 helps on busy CPUs)
    malloc_mmap_mb: float | None = (
        None  # glibc: blocks >= this many MiB get their own mmap (training/allocator.py)
    )
    log_every: int = 1
    trackers: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    resume: bool | str = False  # true = the last checkpoint in output_dir; or a checkpoint directory
    find_unused_parameters: bool = False  # DDP option for models with trainable parameters left unused
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto|fp32|bf16|fp16, got {self.precision!r}")
        if "jsonl" not in self.trackers:
            self.trackers = ["jsonl", *self.trackers]
