"""The trigger policy: which document types get a fine-tune now, and for the others, why not. It counts
documents (page ids; a sample without one is its own document), not samples."""

from __future__ import annotations

from dataclasses import dataclass

from deepsynth.loop.config import TriggerSettings
from deepsynth.loop.state import LoopState


@dataclass
class Decision:
    doc_type: str
    fire: bool
    reason: str


def mix_problem(state: LoopState, trigger: TriggerSettings) -> str | None:
    """Why the labelled documents' mix of types is outside the target mix (None when within tolerance or unset)."""
    if not trigger.target_mix:
        return None
    total = sum(t.n_documents for t in state.types.values())
    for name, target in sorted(trigger.target_mix.items()):
        share = state.types[name].n_documents / total if total and name in state.types else 0.0
        if abs(share - target) > trigger.mix_tolerance:
            return (f"mix: {name} is {share:.0%} of the labelled documents, target {target:.0%} "
                    f"± {trigger.mix_tolerance:.0%}")  # fmt: skip
    return None


def decide(state: LoopState, trigger: TriggerSettings, now: float) -> list[Decision]:
    """One decision per known type, in name order."""
    mix = mix_problem(state, trigger)
    out = []
    for name, t in sorted(state.types.items()):
        new, since = t.new_documents, None if t.last_run_at is None else (now - t.last_run_at) / 60
        if new < trigger.min_new:
            out.append(Decision(name, False, f"{new} new labelled documents < min_new {trigger.min_new}"))
        elif since is not None and since < trigger.min_interval_minutes:
            out.append(Decision(name, False, f"last run {since:.0f} min ago < min_interval "
                                             f"{trigger.min_interval_minutes:g} min"))  # fmt: skip
        elif trigger.target_mix and name not in trigger.target_mix:
            out.append(Decision(name, False, "not in trigger.target_mix"))
        elif mix is not None:
            out.append(Decision(name, False, mix))
        else:
            out.append(Decision(name, True, f"{new} new labelled documents >= min_new {trigger.min_new}"))
    return out
