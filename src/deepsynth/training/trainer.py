"""The one training loop for every model family (setup → train → cleanup, built on ``accelerate``).

The trainer knows only :class:`~deepsynth.models.base.ModelAdapter` (``collate``, ``loss``, ``recognize``,
``save``) and its hooks, which have no-op defaults: ``extend_charset(texts)``, ``prune_charset(texts)``, ``prepare_for_training(cfg)``,
``apply_lora(cfg.lora)``, ``train_mode()`` (PP-OCR keeps BatchNorm in eval) and ``to(device)``.

``python -m deepsynth.cli.main train CONFIG`` runs it on one process; ``accelerate launch --num_processes N
-m deepsynth.cli.main train CONFIG`` runs data-parallel (DDP; gloo on CPU, NCCL on GPUs): each process takes its
slice of every global batch (see :mod:`deepsynth.training.data`) and gradients are averaged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepsynth.config import to_dict
from deepsynth.data import DataReport, Sample
from deepsynth.models.base import ModelAdapter
from deepsynth.models.threads import respect_omp_thread_limit
from deepsynth.training import checkpoint as ckpt
from deepsynth.training.allocator import set_mmap_threshold
from deepsynth.training.budget import StepPlan, every, warmup_steps
from deepsynth.training.config import TrainConfig
from deepsynth.training.data import (
    BatchPlan,
    aspect_ratios,
    describe_split,
    epoch_loader,
    fingerprint,
    load_split,
    small_validation,
)
from deepsynth.training.ema import WeightEMA
from deepsynth.training.runtime import (
    LossModule,
    build_adapter,
    choose_precision,
    cpu_only,
    ensure_trainable,
    freeze_parameters,
    to_device,
)
from deepsynth.training.schedule import build_optimizer, build_scheduler
from deepsynth.training.trackers import NullTracker, build_trackers

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced (also written to ``run_dir/result.json``)."""

    run_dir: str
    steps: int = 0
    losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> mean loss
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_step: int | None = None
    best_dir: str | None = None
    final_dir: str | None = None
    stopped: str = ""
    hub_url: str | None = None
    hub_error: str | None = None
    skipped_samples: int = 0
    skipped_batches: int = 0
    wall_seconds: float = 0.0
    lm: dict[str, Any] | None = None  # the LM reader's choice on validation (lm.enabled)


class Trainer:
    """``Trainer(cfg).run()``; pass ``adapter``/``train_samples``/``eval_samples`` to skip building them."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        adapter: ModelAdapter | None = None,
        train_samples: list[Sample] | None = None,
        eval_samples: list[Sample] | None = None,
        callbacks: list[Callable[[Trainer], None]] | None = None,
    ):
        self.cfg = cfg
        self.callbacks = list(callbacks or [])  # called after every optimizer step with the trainer
        self._stop_requested = False
        self.adapter = adapter
        self.train_samples = train_samples
        self.eval_samples = eval_samples
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.report = DataReport()
        self.result = TrainResult(run_dir=str(self.run_dir))
        # progress state (all of it goes into checkpoints)
        self.step = 0
        self.epoch = 0
        self.position = 0  # micro-batches of `epoch` already consumed
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self._skipped_ids: set[str] = set()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        cfg = self.cfg
        self.t_start = time.perf_counter()
        precision = choose_precision(cfg.precision)
        _allow_precision(precision)
        self.acc = Accelerator(
            cpu=cpu_only(),  # on CPU, torchrun/accelerate-launched processes then form a gloo group (MULTI_CPU)
            mixed_precision=precision,
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)
            ],
        )
        self.is_main = self.acc.is_main_process
        self.world = self.acc.num_processes
        # process-wide torch settings, restored in cleanup()
        self._saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        set_mmap_threshold(cfg.malloc_mmap_mb)
        respect_omp_thread_limit()
        set_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.is_main:  # temp dirs of checkpoint writes a kill interrupted
            for d in (self.ckpt_dir, self.run_dir):
                ckpt.clean_stale_temp(d)
        resume_from = self._resolve_resume()

        # data
        if self.train_samples is None:
            self.train_samples = load_split(cfg.data, "train", self.report)
        if self.eval_samples is None:
            self.eval_samples = load_split(cfg.data, "eval", self.report)
        if self.is_main:
            log.info("%s", describe_split(cfg.data, len(self.train_samples), len(self.eval_samples)))
            if warning := small_validation(len(self.eval_samples)):
                log.warning("%s", warning)
        if not self.train_samples:
            raise ValueError(
                f"no training samples (data.train={cfg.data.train}, split={cfg.data.train_split})"
            )

        # model + hooks
        if self.adapter is None:
            self.adapter = build_adapter(cfg)
        ad = self.adapter = ensure_trainable(self.adapter, cfg.model.family)
        self.added_chars: list[str] = []
        if cfg.model.extend_charset:
            self.added_chars = list(ad.extend_charset([s.text for s in self.train_samples]))
        self.pruned_classes = (
            ad.prune_charset(s.text for s in self.train_samples) if cfg.model.prune_charset else 0
        )
        if self.pruned_classes and self.is_main:
            log.info(
                "charset: dropped %d output classes of scripts the training texts never use",
                self.pruned_classes,
            )
        ad.prepare_for_training(cfg)
        if cfg.lora.enabled:
            ad.apply_lora(cfg.lora)
        frozen = freeze_parameters(ad.model, cfg.model.freeze)
        if frozen and self.is_main:
            log.info("frozen: %d parameters under %s", frozen, cfg.model.freeze)
        ad.to(self.acc.device)  # adapters that move their batches follow the accelerator
        model = ad.model
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.ema = self._new_ema()

        # batches, steps, optimizer
        lengths = aspect_ratios(self.train_samples) if cfg.data.group_by_length else None
        self.plan = BatchPlan(
            len(self.train_samples), cfg.batch_size, self.world, self.acc.process_index, cfg.seed, cfg.data.shuffle,
            lengths=lengths,
        )  # fmt: skip
        if self.plan.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_samples)} training samples are fewer than one global batch "
                f"({self.plan.global_batch} = batch_size {cfg.batch_size} x {self.world} processes)"
            )
        steps_per_epoch = self.plan.batches_per_epoch / cfg.grad_accum
        limits = [cfg.max_steps] if cfg.max_steps else []
        epochs = cfg.epochs if cfg.epochs or cfg.max_steps or cfg.max_minutes else 1.0
        if epochs:
            limits.append(max(1, math.ceil(epochs * steps_per_epoch)))
        self.total_steps = min(limits) if limits else None
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.planner = StepPlan(
            self.total_steps, budget, t_start=self.t_start, after_evals=1.5 if cfg.lm.enabled else 0.0
        )
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self._set_schedule_length(self.total_steps)

        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self.loss_module, self.optimizer = self.acc.prepare(LossModule(ad), self.optimizer)
        self.tracker = build_trackers(cfg.trackers, self.run_dir) if self.is_main else NullTracker()
        if self.is_main:
            from deepsynth.training.run_info import write_run_yaml

            config = to_dict(cfg)
            self.tracker.log_config(config)
            write_run_yaml(
                self.run_dir,
                config,
                data={"train": fingerprint(self.train_samples), "eval": fingerprint(self.eval_samples)},
                world_size=self.world,
                device=str(self.acc.device),
                mixed_precision=precision,
                total_steps=self.total_steps,
                steps_per_epoch=steps_per_epoch,
                trainable_parameters=sum(p.numel() for p in self.trainable),
                added_chars=self.added_chars,
                pruned_classes=self.pruned_classes,
                resumed_from=str(resume_from) if resume_from else None,
            )
            log.info(
                "training %s on %s (%d process(es), precision %s): %d train / %d eval samples, %s steps, "
                "ema decay %s",
                cfg.model.family,
                self.acc.device,
                self.world,
                precision if precision != "no" else "fp32",
                len(self.train_samples),
                len(self.eval_samples),
                self.total_steps or "time-limited",
                f"{cfg.ema.decay:g} (validation, best and final use the averaged weights)"
                if self.ema is not None
                else "0 (off)",
            )
            if cfg.max_minutes:
                log.info(
                    "time budget %.1f min for the whole run (final evaluation and save included)",
                    cfg.max_minutes,
                )
        self.resumed = resume_from is not None

    def _resolve_resume(self) -> Path | None:
        r = self.cfg.resume
        if r in (False, None, "", "false", "False"):
            if ckpt.list_checkpoints(self.ckpt_dir):
                raise FileExistsError(
                    f"{self.run_dir} already holds checkpoints: pass resume=true to continue that run, "
                    f"or choose another output_dir (nothing was overwritten)"
                )
            return None
        if r in (True, "true", "True", "auto", "last"):
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            if last is None:
                warnings.warn(
                    f"resume=true but no checkpoint in {self.ckpt_dir}: starting fresh", stacklevel=2
                )
            return last
        p = Path(str(r))
        if not (p / ckpt.MANIFEST).is_file():
            raise FileNotFoundError(f"resume={r!r}: not a checkpoint directory (no {ckpt.MANIFEST})")
        return p

    # ------------------------------------------------------------------ weight average
    def _new_ema(self) -> WeightEMA | None:
        """The moving average of the parameters that train, starting at their current values (None when off)."""
        if not self.cfg.ema.decay:
            return None
        named = [(n, p) for n, p in self.adapter.model.named_parameters() if p.requires_grad]
        return WeightEMA(named, self.cfg.ema.decay)

    def _averaged(self) -> contextlib.AbstractContextManager[None]:
        """Inside: the model holds the averaged weights when EMA is on (validation, best and final saves)."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def _validate(self) -> bool:
        """Evaluate (the averaged weights when EMA is on), keep the best model; True = stop early."""
        with self._averaged():
            return self._after_eval(self.evaluate())

    # ------------------------------------------------------------------ checkpoints
    def _model_state(self) -> dict[str, torch.Tensor]:
        state = self.adapter.model.state_dict()
        if self.cfg.lora.enabled:  # the frozen base is rebuilt from the config; keep only what trains
            names = {n for n, p in self.adapter.model.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in names}
        return state

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "world_size": self.world,
            "losses": {int(k): float(v) for k, v in self.result.losses.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (main process) and prune old ones; all processes wait."""
        path, t0 = None, time.perf_counter()
        if self.is_main:
            path = ckpt.save_training_checkpoint(
                ckpt.step_dir(self.ckpt_dir, self.step), self._model_state(), self._trainer_state()
            )
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.checkpoint.keep_last)
        self.acc.wait_for_everyone()
        self.planner.save_s = time.perf_counter() - t0
        return path

    def _load_checkpoint(self, path: Path) -> None:
        model_state, st = ckpt.load_training_checkpoint(path)
        strict = not self.cfg.lora.enabled
        missing, unexpected = self.adapter.model.load_state_dict(model_state, strict=False)
        if unexpected or (strict and missing):
            raise ckpt.CheckpointError(
                f"{path}: model state does not fit the model built from the config "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}); was the config changed?"
            )
        if st.get("world_size", 1) != self.world:
            warnings.warn(
                f"resuming a {st.get('world_size')}-process run on {self.world} process(es): the data order "
                "per process changes",
                stacklevel=2,
            )
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.position = st["step"], st["epoch"], st["position"]
        self.best, self.best_step, self.bad_evals = st["best"], st["best_step"], st["bad_evals"]
        self.result.losses = dict(st.get("losses", {}))
        self._pending_rng = st["rng"]
        if self.ema is not None and st.get("ema"):
            try:
                self.ema.load_state_dict(st["ema"])
            except ValueError as exc:
                raise ckpt.CheckpointError(f"{path}: {exc}; was the config changed?") from exc
        elif self.ema is not None:
            warnings.warn(
                f"{path} holds no weight average (saved with ema.decay=0): the average starts from the "
                "resumed weights",
                stacklevel=2,
            )
            self.ema = self._new_ema()
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.position
        )

    def _save_model_dir(self, name: str, metrics: dict[str, Any] | None = None) -> str | None:
        """Atomically write a servable model directory (``adapter.save``) under the run dir."""
        if not self.is_main:
            return None
        import json

        from deepsynth.training.model_card import write_model_card

        def write(tmp: Path) -> None:
            self.adapter.save(tmp)
            data = {"train": fingerprint(self.train_samples), "eval": fingerprint(self.eval_samples)}
            write_model_card(tmp, self.cfg, name=name, step=self.step, metrics=metrics or {}, data=data)
            info = {"step": self.step, "metrics": metrics or {}, "config": to_dict(self.cfg)}
            (tmp / "training_info.json").write_text(
                json.dumps(info, indent=2, default=str, ensure_ascii=False)
            )

        return str(ckpt.write_atomic(self.run_dir / name, write))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """CER/WER of ``adapter.recognize`` on the eval samples (main process; the others wait), through the
        evaluation harness: an unreadable image or a failing sample is reported by id, never ends the run."""
        summary: dict[str, Any] = {}
        if self.is_main and self.eval_samples:
            from deepsynth.evaluation.harness import score_samples

            cfg, model = self.cfg, self.adapter.model
            was_training = model.training
            model.eval()
            t0 = time.perf_counter()
            with torch.no_grad(), self.acc.autocast():
                summary, records = score_samples(
                    self.adapter, self.eval_samples, normalize=cfg.eval.normalize,
                    batch_size=cfg.eval.batch_size, generation=cfg.generation,
                )  # fmt: skip
            examples: list[str] = []
            for r in records:
                if r.get("error") is not None:
                    if r["id"] not in self._skipped_ids:
                        self._skipped_ids.add(r["id"])
                        self.report.skip(r["id"], r["error"], r.get("source"))
                        log.warning("evaluation skipped sample %s: %s", r["id"], r["error"])
                elif len(examples) < cfg.eval.num_examples:
                    examples.append(f"**{r['id']}**  \nref: `{r['ref']}`  \nhyp: `{r['hyp']}`")
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            self.planner.eval_s = summary["seconds"]
            summary["step"] = self.step
            if examples:
                self.tracker.log_text("eval/examples", "\n\n".join(examples), self.step)
            if was_training:
                self._train_mode()
        self.acc.wait_for_everyone()
        return summary

    def _after_eval(self, summary: dict[str, Any]) -> bool:
        """Log an evaluation, keep the best model, return True when early stopping says stop."""
        stop = False
        if self.is_main and summary:
            m = self.cfg.eval.metric
            value = float(summary[m])
            improved = self.best is None or value < self.best - self.cfg.eval.min_delta
            if improved:
                self.best, self.best_step, self.bad_evals = value, self.step, 0
                if self.cfg.checkpoint.save_best:
                    self.result.best_dir = self._save_model_dir("best", summary_small(summary))
            else:
                self.bad_evals += 1
            keys = ("cer", "wer", "exact_match", "repetition_rate", "n")
            logged = {f"eval/{k}": float(summary[k]) for k in keys if k in summary}
            logged[f"eval/best_{m}"] = float(self.best)
            self.tracker.log_metrics(logged, self.step)
            log.info("eval at step %d: %s %.2f%% (best %.2f%% at step %d)", self.step, m, 100 * value,
                     100 * self.best, self.best_step)  # fmt: skip
            self.result.evals.append(summary_small(summary))
            patience = self.cfg.eval.patience
            stop = patience is not None and self.bad_evals >= patience
            if stop:
                log.info("early stopping: %s has not improved for %d evaluations", m, self.bad_evals)
        return self._any_process(stop)

    def _fit_lm_decoder(self, model_dir: Path) -> dict[str, Any] | None:
        """The LM reader of the saved model (best, else final): training/lm_reader.py."""
        from deepsynth.training.lm_reader import fit_lm_reader

        val = [s for s in self.eval_samples if s.id not in self._skipped_ids]
        report = fit_lm_reader(model_dir, self.cfg, self.train_samples, val)
        if report is not None:
            chosen = {
                "lm/val_greedy": report["tried"][0]["score"],
                "lm/val_chosen": report["chosen"]["score"],
            }
            self.tracker.log_metrics(chosen, self.step)
        return report

    # ------------------------------------------------------------------ training
    def _train_mode(self) -> None:
        if self.cfg.freeze_batchnorm:
            self.adapter.train_mode()
        else:
            self.adapter.model.train()

    def _any_process(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(t, reduction="sum").item() > 0)

    def _micro_batches(self):
        """Yield (batch, skipped, n_samples) from the saved data position onwards, epoch after epoch."""
        while True:
            if self.position >= self.plan.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            loader = epoch_loader(
                self.train_samples,
                self.plan,
                self.epoch,
                self.position,
                self.adapter.collate,
                self.cfg.num_workers,
                self.cfg.augment,
            )
            for item in loader:
                self.position += 1
                yield item

    def _out_of_time(self) -> bool:
        return self.planner.out_of_time()

    def _due(self, last: int, times: int | None, every_steps: int) -> bool:
        """Whether an evaluation/checkpoint is due: every ``every_steps``, or ``times`` per planned run."""
        interval = every(self.total_steps, times, every_steps)
        if not interval:
            return False
        return self.step - max(last, 0) >= interval if times else self.step % interval == 0

    def _set_schedule_length(self, total: int | None) -> None:
        """Point the LR schedule (warm-up and decay) at ``total`` planned steps."""
        o = self.cfg.optim
        fn = self.scheduler.lr_lambdas[0]
        fn.total = total
        fn.warmup = warmup_steps(total or 100, o.warmup_ratio, o.warmup_steps)

    def _replan(self) -> None:
        """Re-plan the run's length from the measured step time (time-budgeted runs only)."""
        if self.planner.budget_s is None:
            return
        times = self.cfg.eval.times
        interval = every(self.total_steps, times, self.cfg.eval.every_steps) if self.eval_samples else 0
        evals_left = (self.planner.total or 0) / interval - self.step / interval if interval else 0.0
        total = self.planner.replan(self.step, max(0.0, evals_left))
        if total != self.total_steps:
            self.total_steps = total
            self._set_schedule_length(total)
            if self.step in (3, 10) or self.step % 50 == 0:
                log.info(
                    "plan: %s steps in the %.1f-min budget (%.2f s/step, evaluation %.1f s)",
                    total, self.cfg.max_minutes, self.planner.step_time(), self.planner.eval_s,
                )  # fmt: skip

    def train(self) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        self._train_mode()
        at_start = cfg.eval.at_start and not self.resumed and self.eval_samples
        if at_start and self._validate():
            self.result.stopped = "early stopping"
        if getattr(self, "_pending_rng", None) is not None:
            ckpt.set_rng_state(self._pending_rng)  # exactly where the interrupted run stood
            self._pending_rng = None
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not (self.is_main and cfg.progress),
        )  # fmt: skip
        stream = self._micro_batches()
        last_eval_step = self.step if not self.resumed else -1
        last_ckpt_step = self.step
        while not self.result.stopped:
            if self.total_steps is not None and self.step >= self.total_steps:
                if self.total_steps < (self.planner.limit or self.total_steps + 1):
                    self.result.stopped = "time budget"
                else:
                    self.result.stopped = "max steps" if cfg.max_steps == self.total_steps else "epochs"
                break
            if self._any_process(self._stop_requested):
                self.result.stopped = "interrupted"
                break
            if self._any_process(self._out_of_time()):
                self.result.stopped = "time budget"
                break
            t0 = time.perf_counter()
            loss_sum, n_good, n_samples = 0.0, 0, 0
            for k in range(cfg.grad_accum):
                batch, skipped, n = next(stream)
                for sid, reason, source in skipped:
                    if sid not in self._skipped_ids:  # a bad sample comes back every epoch: report it once
                        self._skipped_ids.add(sid)
                        self.report.skip(sid, reason, source)
                        log.warning("skipped sample %s: %s", sid, reason)
                n_samples += n - len(skipped)
                batch = to_device(batch, acc.device) if batch is not None else None
                sync = k == cfg.grad_accum - 1
                ctx = contextlib.nullcontext() if sync or self.world == 1 else acc.no_sync(self.loss_module)
                with ctx:
                    loss, problem = self.loss_module(batch)
                    acc.backward(loss / cfg.grad_accum)
                if problem:
                    self.result.skipped_batches += 1
                    if batch is not None:
                        log.warning("skipped a batch at step %d: %s", self.step + 1, problem)
                else:
                    loss_sum += float(loss.detach().item())
                    n_good += 1
            if self.world > 1:
                t = acc.reduce(
                    torch.tensor([loss_sum, float(n_good), float(n_samples)], device=acc.device), "sum"
                )
                loss_sum, n_good, n_samples = float(t[0]), int(t[1]), int(t[2])
            if n_good == 0:  # nothing usable in this step anywhere: do not move the weights
                self.optimizer.zero_grad(set_to_none=True)
                continue
            grad_norm = None
            if cfg.optim.grad_clip:
                norm = acc.clip_grad_norm_(self.trainable, cfg.optim.grad_clip)  # None under DeepSpeed
                grad_norm = float(norm) if norm is not None else None
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            self.step += 1
            loss_value = loss_sum / n_good
            self.result.losses[self.step] = loss_value
            dt = time.perf_counter() - t0
            self.planner.record_step(dt)
            if self.step in (3, 6) or self.step % 10 == 0:
                self._replan()
                bar.total = self.total_steps
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.step % max(cfg.log_every, 1) == 0:
                metrics = {
                    "train/loss": loss_value,
                    "train/lr": self.scheduler.get_last_lr()[0],
                    "train/epoch": self.epoch + self.position / self.plan.batches_per_epoch,
                    "train/step_seconds": dt,
                    "train/samples_per_second": n_samples / dt if dt > 0 else 0.0,
                    "train/skipped_samples": float(self.report.n_skipped),
                }
                if grad_norm is not None and math.isfinite(grad_norm):
                    metrics["train/grad_norm"] = grad_norm
                if self.ema is not None:
                    metrics["train/ema_decay"] = self.ema.current_decay()
                self.tracker.log_metrics(metrics, self.step)
            if self.eval_samples and self._due(last_eval_step, cfg.eval.times, cfg.eval.every_steps):
                last_eval_step = self.step
                if self._validate():
                    self.result.stopped = "early stopping"
            if self._due(last_ckpt_step, cfg.checkpoint.times, cfg.checkpoint.every_steps):
                self.save_checkpoint()
                last_ckpt_step = self.step
            for callback in self.callbacks:
                callback(self)
        bar.close()
        if self.result.stopped == "interrupted":  # SIGTERM/SIGINT or request_stop(): checkpoint and leave
            if last_ckpt_step != self.step:
                self.save_checkpoint()
            return self.result
        # final evaluation / checkpoint (training weights) / model (the averaged weights when EMA is on)
        if self.eval_samples and last_eval_step != self.step and self.step > 0:
            self._validate()
        if last_ckpt_step != self.step:
            self.save_checkpoint()
        if cfg.checkpoint.save_final:
            with self._averaged():
                self.result.final_dir = self._save_model_dir(
                    "final", self.result.evals[-1] if self.result.evals else None
                )
        model_dir = self.result.best_dir or self.result.final_dir
        if cfg.lm.enabled and model_dir and self.is_main:
            self.result.lm = self._fit_lm_decoder(Path(model_dir))
        if model_dir and self.is_main:
            self.tracker.log_model(Path(model_dir), "best" if self.result.best_dir else "final")
        if cfg.checkpoint.push_to_hub and self.is_main:
            self._push_to_hub(cfg.checkpoint.push_to_hub, cfg.checkpoint.hub_private)
        return self.result

    def _push_to_hub(self, repo_id: str, private: bool) -> None:
        from deepsynth.training.hub import push_model_dir

        local = self.result.best_dir or self.result.final_dir
        if local is None:
            self.result.hub_error = (
                "push to hub: no best or final model was saved (checkpoint.save_final=false?)"
            )
        else:
            try:
                self.result.hub_url = push_model_dir(local, repo_id, private=private)
            except (RuntimeError, FileNotFoundError) as exc:
                self.result.hub_error = str(exc)
        if self.result.hub_error:
            log.error("%s", self.result.hub_error)

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        import json

        r = self.result
        r.steps, r.best_metric, r.best_step = self.step, self.best, self.best_step
        r.skipped_samples = self.report.n_skipped
        r.wall_seconds = round(time.perf_counter() - self.t_start, 2)
        if self.is_main:
            self.report.write_json(self.run_dir / "data_report.json")
            (self.run_dir / "result.json").write_text(
                json.dumps(dataclasses.asdict(r), indent=2, default=str, ensure_ascii=False)
            )
            if self.report.n_skipped:
                log.warning(
                    "%d sample(s) skipped; see %s", self.report.n_skipped, self.run_dir / "data_report.json"
                )
        self.tracker.close()
        self.acc.wait_for_everyone()
        threads, deterministic = self._saved_torch
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)

    def request_stop(self) -> None:
        """Stop after the current step, write a checkpoint and return (what SIGTERM/SIGINT do)."""
        self._stop_requested = True

    def run(self) -> TrainResult:
        self.setup()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.request_stop())
        try:
            return self.train()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.cleanup()


def summary_small(summary: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of an OCRMetrics summary (no per-subset tables)."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) or v is None}


def _allow_precision(precision: str) -> None:
    """accelerate keeps one process-wide state: a single-process run after one with another precision (tune,
    loop, bench run several) would be refused, so that state is reset; a distributed group is left alone."""
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def train(cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    """Run one training job (see :class:`Trainer`)."""
    return Trainer(cfg, **kwargs).run()
