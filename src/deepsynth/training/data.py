"""Training data plumbing: samples from the data layer, a resumable batch order, collate that skips bad samples.

Samples are kept as a list of lazily-decoded :class:`Sample` objects (ids, texts and image loaders; images are
decoded at collate time and released right after), so an epoch order is a seeded permutation and the data
position of a resumed run is just ``(epoch, micro_batch_index)``.

With ``W`` processes and per-process batch ``B`` the epoch is cut into global batches of ``W * B`` samples;
process ``r`` takes slice ``[r*B, (r+1)*B)`` of each. One process with batch ``W*B`` therefore sees exactly the
same global batches as ``W`` processes with batch ``B``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from deepsynth.data import DataReport, Sample, SampleError, SampleFilter, open_user_sources
from deepsynth.data.line_augment import LineAugment
from deepsynth.training.config import DataSettings

log = logging.getLogger(__name__)


def sample_filter(d: DataSettings, split: str | None, limit: int | None) -> SampleFilter:
    return SampleFilter(
        languages=d.languages,
        subsets=d.subsets,
        doc_types=d.doc_types,
        levels=d.levels,
        exclude_flags=d.exclude_flags,
        split=split,
        split_key=d.split_key,
        split_ratios=tuple(d.split_ratios),
        seed=d.split_seed,
        limit=limit,
    )


def load_split(d: DataSettings, which: str, report: DataReport) -> list[Sample]:
    """The training (``which="train"``) or evaluation samples described by ``d``, read with the data layer."""
    if which == "train":
        split = d.train_split
        if split == "auto":
            split = None if d.eval else "train"
        specs, limit = d.train, d.limit
    else:
        specs, split, limit = (
            (d.eval, None, d.eval_limit) if d.eval else (d.train, d.eval_split, d.eval_limit)
        )
    if not specs:
        return []
    return list(open_user_sources(list(specs), filter=sample_filter(d, split, limit), report=report))


def describe_split(d: DataSettings, n_train: int, n_eval: int) -> str:
    """One log line saying how the labelled data was divided (nothing is dropped silently)."""
    if d.eval:
        return (
            f"data: {n_train} training samples (all of data.train), {n_eval} evaluation samples (data.eval)"
        )
    tr, va, te = d.split_ratios
    text = (
        f"data: {n_train} train / {n_eval} validation samples, split by {d.split_key!r} hash "
        f"(seed {d.split_seed}, ratios {tr:g}/{va:g}/{te:g})"
    )
    if te > 0:
        text += f"; {te:.0%} of the groups form a test split that training never uses (set data.split_ratios)"
    if d.eval_limit is not None and n_eval >= d.eval_limit:
        text += f"; evaluation capped at data.eval_limit={d.eval_limit}"
    return text


SMALL_VALIDATION = (
    100  # lines; fewer choose the best checkpoint on noise (stanford: 21 lines picked a worse model)
)


def small_validation(n_eval: int) -> str | None:
    """A warning when the validation set is too small to choose checkpoints by its CER (None when it is fine)."""
    if not 0 < n_eval < SMALL_VALIDATION:
        return None
    return (
        f"only {n_eval} validation samples: CER differences between checkpoints are mostly noise at this size, "
        f"so the 'best' model may not be; give {SMALL_VALIDATION}+ (data.eval, or a larger data.split_ratios[1])"
    )


def aspect_ratios(samples: Sequence[Sample]) -> list[float]:
    """Width/height per sample from the image header (no full decode); 0 for unreadable ones."""
    out = []
    for s in samples:
        try:
            img = s._image if s._image is not None else (s.image_loader() if s.image_loader else None)
            out.append(img.size[0] / max(1, img.size[1]) if img is not None else 0.0)
            if img is not None and img is not s._image:
                img.close()
        except Exception:  # a bad sample is skipped (and reported) when it is collated
            out.append(0.0)
    return out


def fingerprint(samples: Sequence[Sample]) -> dict[str, Any]:
    """sha256 over (id, text) in order: changes when any sample, label or the order changes."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.id.encode())
        h.update(b"\x00")
        h.update(s.text.encode())
        h.update(b"\x01")
    return {"n": len(samples), "sha256": h.hexdigest()}


@dataclass
class BatchPlan:
    """Which samples each micro-batch of each epoch holds, for one process."""

    n_samples: int
    batch_size: int  # per process
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True
    lengths: Sequence[float] | None = None  # per-sample size (e.g. aspect ratio): group similar ones
    group_window: int = 16  # global batches per window sorted by length (HF-style group_by_length)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        if self.world_size > 1:  # every process must get a full slice, or DDP would wait forever
            return self.n_samples // self.global_batch
        return math.ceil(self.n_samples / self.global_batch)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n_samples))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_samples, generator=g).tolist()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = self.order(epoch)
        n = self.batches_per_epoch * self.global_batch
        order = order[:n] if self.world_size > 1 else order
        globals_ = [order[i : i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        if self.lengths is not None:
            globals_ = self._grouped(order, epoch)
        return [g[self.rank * self.batch_size : (self.rank + 1) * self.batch_size] for g in globals_]

    def _grouped(self, order: list[int], epoch: int) -> list[list[int]]:
        """Sort windows of the shuffled order by length, cut into batches, shuffle the batches (less padding)."""
        window = self.global_batch * max(1, self.group_window)
        batches: list[list[int]] = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.global_batch] for i in range(0, len(chunk), self.global_batch)]
        if self.world_size > 1:
            batches = [b for b in batches if len(b) == self.global_batch]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def collate_skipping(
    collate: Callable[[Sequence[Sample]], dict[str, Any]], samples: Sequence[Sample]
) -> tuple[dict[str, Any] | None, list[tuple[str, str, str]]]:
    """Collate, dropping samples that raise; return (batch or None if nothing is left, [(id, reason, source)]).

    A :class:`SampleError` names its sample. Any other exception is traced to its sample(s) by collating
    them one at a time; if each works alone the error is not a sample's fault and is raised.
    """
    skipped: list[tuple[str, str, str]] = []
    remaining = list(samples)
    while remaining:
        try:
            batch = collate(remaining)
            return batch, skipped
        except SampleError as exc:
            bad = [s for s in remaining if s.id == exc.sample_id]
            if not bad:
                raise
            skipped.append((exc.sample_id, exc.reason, exc.source or str(bad[0].meta.get("source", ""))))
            remaining = [s for s in remaining if s.id != exc.sample_id]
        except Exception as exc:
            culprits = []
            for s in remaining:
                try:
                    collate([s])
                except Exception as one:
                    culprits.append((s, one))
            if not culprits:
                raise
            for s, err in culprits:
                skipped.append((s.id, f"{type(err).__name__}: {err}", str(s.meta.get("source", ""))))
            ids = {s.id for s, _ in culprits}
            remaining = [s for s in remaining if s.id not in ids]
            log.debug("collate failed (%s); skipped %d sample(s)", exc, len(ids))
        finally:
            for s in samples:
                s.release()
    return None, skipped


def augmented(sample: Sample, augment: LineAugment, seed: int) -> Sample:
    """A copy of ``sample`` whose image is augmented with ``seed``; bad images fail later, naming the sample."""

    def load() -> Image.Image:
        try:
            return augment(sample.image, seed)
        finally:
            sample.release()

    return dataclasses.replace(sample, image_loader=load, _image=None)


class EpochBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``i`` is the collated micro-batch ``i`` of one epoch (DataLoader-ready).

    With ``augment``, each sample's image is augmented with a seed fixed by (seed, epoch, sample index), so a
    resumed run sees exactly the images an uninterrupted one would.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        batches: list[list[int]],
        collate: Callable,
        augment: LineAugment | None = None,
        seed: int = 0,
    ):
        self.samples, self.batches, self.collate = samples, batches, collate
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[dict[str, Any] | None, list[tuple[str, str, str]], int]:
        chosen = [self.samples[j] for j in self.batches[i]]
        if self.augment is not None:
            chosen = [
                augmented(s, self.augment, self.seed + 7919 * j)
                for s, j in zip(chosen, self.batches[i], strict=True)
            ]
        batch, skipped = collate_skipping(self.collate, chosen)
        return batch, skipped, len(chosen)


def _identity(x: Any) -> Any:
    return x


def epoch_loader(
    samples: Sequence[Sample],
    plan: BatchPlan,
    epoch: int,
    start: int,
    collate: Callable,
    num_workers: int = 0,
    augment: LineAugment | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over micro-batches ``start..`` of ``epoch`` (workers collate ahead of the training step)."""
    seed = (plan.seed * 1_000_003 + epoch) * 1_000_003
    ds = EpochBatches(samples, plan.epoch_batches(epoch), collate, augment, seed)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        sampler=list(range(start, len(ds))),
        num_workers=num_workers,
        collate_fn=_identity,
        # worker seeds come from this generator, not the global RNG, so resuming does not shift the RNG
        generator=torch.Generator().manual_seed(plan.seed * 7919 + epoch),
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )
