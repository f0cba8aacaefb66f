"""Turning points and the readiness score: pure functions over metric histories (numpy only).

A history is a list of (step, value) pairs in step order, as the callbacks record them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

History = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class Flag:
    kind: str  # "loss_turn" | "passk_decline" | "gap_widening"
    began_step: int  # where the bad trend began (e.g. the held-out loss minimum)
    confirmed_step: int  # the measurement that confirmed it
    detail: str


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average, weight on the previous smoothed value (0 = no smoothing)."""
    out = np.empty(len(values))
    for i, v in enumerate(values):
        out[i] = v if i == 0 else weight * out[i - 1] + (1 - weight) * v
    return out


def detect_loss_turn(
    history: History, smoothing: float = 0.3, patience: int = 3, min_delta: float = 0.0
) -> Flag | None:
    """The generalization-loss turning point.

    Confirmed when the smoothed loss stays above its running minimum by more than `min_delta`
    (relative: a fraction of that minimum) for `patience` consecutive measurements. The rise is
    reported as beginning at the raw minimum among the measurements up to the confirmation.
    """
    if len(history) < patience + 1:
        return None
    steps = [s for s, _ in history]
    raw = np.array([v for _, v in history], dtype=float)
    smooth = ema(raw, smoothing)
    best, above = np.inf, 0
    for i, value in enumerate(smooth):
        if value < best:
            best, above = value, 0
            continue
        above = above + 1 if value > best + min_delta * abs(best) else 0
        if above >= patience:
            began = int(np.argmin(raw[: i + 1]))
            return Flag(
                "loss_turn",
                steps[began],
                steps[i],
                f"held-out loss min {raw[began]:.4f} at step {steps[began]}, now {raw[i]:.4f} "
                f"(smoothed loss above its minimum for {patience} measurements)",
            )
    return None


def detect_passk_decline(passk: History, pass1: History, patience: int = 2, min_delta: float = 0.01) -> Flag | None:
    """Pass@large-k falling while pass@1 still rises: the "high SFT score misleads" pattern.

    Confirmed when pass@k stays more than `min_delta` (absolute) below its running maximum for
    `patience` consecutive measurements while pass@1 is at or above its value at that maximum.
    """
    p1 = dict(pass1)
    steps = [s for s, _ in passk]
    values = [v for _, v in passk]
    best_i, below = 0, 0
    for i, value in enumerate(values):
        if value >= values[best_i]:
            best_i, below = i, 0
            continue
        rising = p1.get(steps[i], -np.inf) >= p1.get(steps[best_i], np.inf)
        if values[best_i] - value > min_delta and rising:
            below += 1
            if below >= patience:
                return Flag(
                    "passk_decline",
                    steps[best_i],
                    steps[i],
                    f"pass@k fell from {values[best_i]:.3f} (step {steps[best_i]}) to {value:.3f} while pass@1 "
                    f"rose from {p1[steps[best_i]]:.3f} to {p1[steps[i]]:.3f}",
                )
        else:
            below = 0
    return None


def detect_gap_widening(gap: History, patience: int = 3, min_delta: float = 0.02) -> Flag | None:
    """The held-out minus training loss gap growing for `patience` measurements in a row, by > min_delta.

    Only a positive gap counts: early in training the (lagging, window-averaged) training loss sits
    above the held-out loss and the gap "grows" towards zero without any overfitting.
    """
    steps = [s for s, _ in gap]
    values = [v for _, v in gap]
    run_start = 0
    for i in range(1, len(values)):
        if values[i] <= values[i - 1] or values[i - 1] <= 0:
            run_start = i
            continue
        if i - run_start >= patience and values[i] - values[run_start] > min_delta:
            return Flag(
                "gap_widening",
                steps[run_start],
                steps[i],
                f"held-out/train gap grew from {values[run_start]:.4f} to {values[i]:.4f}",
            )
    return None


@dataclass
class Candidate:
    step: int
    loss: float | None = None
    passk: float | None = None
    extra: dict = field(default_factory=dict)


def readiness_scores(
    candidates: Sequence[Candidate], loss_weight: float = 0.5, passk_weight: float = 0.5
) -> dict[int, float]:
    """Score each checkpoint in [0, 1]; higher is a better RL start.

    score = (w_loss * (L_max - L) / (L_max - L_min) + w_passk * (P - P_min) / (P_max - P_min)) / (w_loss + w_passk)

    with L the generalization loss and P pass@large-k, min/max over the candidates. A signal that
    a candidate lacks, or that does not vary, drops out of the formula (its weight too).
    """

    def norm(values: Mapping[int, float], higher_is_better: bool) -> dict[int, float] | None:
        if len(values) < 1:
            return None
        lo, hi = min(values.values()), max(values.values())
        if hi - lo < 1e-12:
            return None
        return {s: ((v - lo) if higher_is_better else (hi - v)) / (hi - lo) for s, v in values.items()}

    losses = norm({c.step: c.loss for c in candidates if c.loss is not None}, higher_is_better=False)
    passk = norm({c.step: c.passk for c in candidates if c.passk is not None}, higher_is_better=True)
    scores = {}
    for c in candidates:
        parts = []
        if losses is not None and c.step in losses and loss_weight > 0:
            parts.append((loss_weight, losses[c.step]))
        if passk is not None and c.step in passk and passk_weight > 0:
            parts.append((passk_weight, passk[c.step]))
        if parts:
            scores[c.step] = sum(w * v for w, v in parts) / sum(w for w, _ in parts)
        else:
            scores[c.step] = 1.0 if len(candidates) == 1 else 0.0
    return scores
