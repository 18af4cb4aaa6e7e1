"""Step planning under a wall-clock budget: how many optimizer steps fit, re-planned from measured step time.

``max_minutes`` covers the whole run: setup, every evaluation, the final evaluation and the final save. The planner
keeps a reserve for what must happen after the last step (final evaluation + saves), measured on the run itself,
so a time-capped run on a slow or busy machine still warms up, validates and saves, and stops on time.
Cadences given as counts per run (``eval.times``, ``checkpoint.times``, ``optim.warmup_ratio``) follow the plan.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class StepPlan:
    """Planned optimizer steps for a run, with a time budget when ``budget_s`` is set."""

    limit: int | None  # steps allowed by max_steps / epochs (None = only time limits the run)
    budget_s: float | None  # wall-clock budget of the whole run, seconds (None = no budget)
    t_start: float = field(default_factory=time.perf_counter)
    safety: float = 0.03  # share of the budget kept free for noise in the estimates
    step_times: list[float] = field(default_factory=list)
    eval_s: float = 0.0  # duration of the last evaluation
    save_s: float = 5.0  # duration of a final-model save (measured once a checkpoint is written)
    after_evals: float = 0.0  # work after the final save, in evaluations (fitting the LM reader: ~1.5)
    total: int | None = None  # current plan

    def __post_init__(self) -> None:
        self.total = self.limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def record_step(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def step_time(self) -> float | None:
        """Median of the recent step times (the first step, which warms caches, is left out once others exist)."""
        times = self.step_times[1:] if len(self.step_times) > 2 else self.step_times
        return statistics.median(times[-30:]) if times else None

    def reserve_s(self) -> float:
        """Seconds needed after the last step: final evaluation, the last checkpoint, the best/final models and
        ``after_evals``."""
        return self.eval_s * (1 + self.after_evals) + 3 * self.save_s

    def replan(self, step: int, evals_left: float = 0.0) -> int | None:
        """Update ``total`` from the budget left; returns the plan (``limit`` when there is no budget)."""
        per_step = self.step_time()
        if self.budget_s is None or per_step is None:
            return self.total
        left = (
            self.budget_s * (1 - self.safety) - self.elapsed() - self.reserve_s() - evals_left * self.eval_s
        )
        fit = step + max(0, math.floor(left / per_step))
        self.total = min(self.limit, fit) if self.limit is not None else fit
        return self.total

    def out_of_time(self) -> bool:
        """True once the time left is only enough for what follows the last step."""
        if self.budget_s is None:
            return False
        return self.elapsed() + self.reserve_s() >= self.budget_s * (1 - self.safety)


def every(total: int | None, times: int | None, every_steps: int) -> int:
    """Steps between events: ``total / times`` when a count per run is given, else ``every_steps`` (0 = never)."""
    if times and total:
        return max(1, math.ceil(total / times))
    return every_steps


def warmup_steps(total: int | None, ratio: float, fixed: int) -> int:
    """Warm-up length: a fraction of the planned steps when ``ratio`` is set, else ``fixed``."""
    if ratio and total:
        return max(1, round(ratio * total))
    return fixed
