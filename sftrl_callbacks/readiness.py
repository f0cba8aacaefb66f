"""Turning points, the stop policy and the RL-start choice: pure functions over metric histories (numpy only).

A history is a list of (step, value) pairs in step order, as the callbacks record them.
`RLReadinessCallback` decides *when* to call these; they decide *what*.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .io import series_from_json, series_to_json
from .records import GapRecord, LossRecord, PassAtKRecord

History = Sequence[tuple[int, float]]

DEFAULT_SMOOTHING = 0.3  # EMA weight on the previous value: the loss_smoothed metric and the turn detector
STOP_POLICIES = ("off", "loss", "passk", "either", "both")
SCORE_FORMULA = "(w_loss*(L_max-L)/(L_max-L_min) + w_passk*(P-P_min)/(P_max-P_min)) / (w_loss+w_passk)"


@dataclass(frozen=True)
class Flag:
    kind: str  # "loss_turn" | "passk_decline" | "gap_widening" | "nan"
    began_step: int  # where the bad trend began (e.g. the held-out loss minimum)
    confirmed_step: int  # the measurement that confirmed it
    detail: str


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average, weight on the previous smoothed value (0 = no smoothing)."""
    out = np.empty(len(values))
    for i, v in enumerate(values):
        out[i] = v if i == 0 else weight * out[i - 1] + (1 - weight) * v
    return out


@dataclass(frozen=True)
class RunningSummary:
    minimum: float | None  # over finite values only
    minimum_step: int | None
    smoothed: float | None  # EMA of the finite values


def running_summary(history: History, smoothing: float = DEFAULT_SMOOTHING) -> RunningSummary:
    """Running minimum (and its step) and EMA of a loss history; non-finite values are left out."""
    finite = [(s, v) for s, v in history if np.isfinite(v)]
    if not finite:
        return RunningSummary(None, None, None)
    step, value = min(finite, key=lambda sv: sv[1])
    return RunningSummary(float(value), int(step), float(ema([v for _, v in finite], smoothing)[-1]))


def detect_loss_turn(
    history: History, smoothing: float = DEFAULT_SMOOTHING, patience: int = 3, min_delta: float = 0.0
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


def detect_nonfinite(name: str, step: int, value: float) -> Flag | None:
    """A NaN / inf measurement (e.g. a model whose weights went NaN)."""
    if np.isfinite(value):
        return None
    return Flag("nan", step, step, f"{name} is {value} at step {step}: the model or the measurement broke")


def should_stop(flags: Sequence[Flag], policy: str) -> bool:
    """Whether the flags raised so far satisfy the early-stopping policy (see `STOP_POLICIES`)."""
    kinds = {f.kind for f in flags}
    return {
        "loss": "loss_turn" in kinds,
        "passk": "passk_decline" in kinds,
        "either": bool(kinds & {"loss_turn", "passk_decline"}),
        "both": {"loss_turn", "passk_decline"} <= kinds,
    }.get(policy, False)


@dataclass
class Candidate:
    step: int
    loss: float | None = None
    passk: float | None = None


@dataclass(frozen=True)
class RLStartChoice:
    step: int
    score: float
    why: str
    ranking: list[dict]  # every eligible candidate, best first
    excluded: list[dict]  # candidates left out, with the reason (a NaN / inf signal)


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


def choose_rl_start(
    candidates: Sequence[Candidate],
    loss_weight: float = 0.5,
    passk_weight: float = 0.5,
    flags: Sequence[Flag] = (),
    passk_label: str = "pass@k",
) -> RLStartChoice | None:
    """The candidate with the highest readiness score (ties: the later step), with its explanation.

    A candidate with a non-finite signal is never chosen; None when no candidate is eligible.
    """
    eligible, excluded = [], []
    for c in candidates:
        bad = [name for name, v in (("loss", c.loss), ("passk", c.passk)) if v is not None and not np.isfinite(v)]
        if bad:
            excluded.append({"step": c.step, "reason": f"non-finite {' and '.join(bad)}"})
        else:
            eligible.append(c)
    if not eligible:
        return None
    scores = readiness_scores(eligible, loss_weight, passk_weight)
    best = max(eligible, key=lambda c: (scores[c.step], c.step))
    why = [f"highest readiness score {scores[best.step]:.3f} among {len(eligible)} saved checkpoints"]
    losses = [c.loss for c in eligible if c.loss is not None]
    if best.loss is not None:
        why.append(f"held-out loss {best.loss:.4f} (min over checkpoints {min(losses):.4f})")
    if best.passk is not None:
        why.append(f"{passk_label} {best.passk:.3f}")
    why += [f"excluded step {e['step']}: {e['reason']}" for e in excluded]
    why += [f"flag {f.kind}: {f.detail}" for f in flags]
    ranking = [
        {"step": c.step, "score": scores[c.step], "heldout_loss": c.loss, "passk": c.passk}
        for c in sorted(eligible, key=lambda c: (-scores[c.step], -c.step))
    ]
    return RLStartChoice(best.step, scores[best.step], "; ".join(why), ranking, excluded)


def rl_start_document(
    choice: RLStartChoice,
    path: str,
    checkpoint: str,
    signals: Mapping[str, float | None],
    weights: Mapping[str, float],
    flags: Sequence[Flag],
    missing: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `rl_start.json` document: where the chosen checkpoint is (`path`, its protected copy, and the
    trainer's `checkpoint`), its step, score and signals, the signals it was chosen without (`missing`: signal ->
    why), why, the formula and weights, the flags and the ranking."""
    return {
        "path": os.path.abspath(path),
        "checkpoint": os.path.abspath(checkpoint),
        "step": choice.step,
        "score": choice.score,
        "metrics": dict(signals),
        "missing": dict(missing or {}),
        "why": choice.why,
        "score_formula": SCORE_FORMULA,
        "weights": dict(weights),
        "flags": [asdict(f) for f in flags],
        "ranking": choice.ranking,
        "excluded": choice.excluded,
    }


class ReadinessTracker:
    """The watched signals of one run and what they imply: flags, a stop, a save at a new loss minimum.

    No trainer and no I/O: `RLReadinessCallback` feeds it records and acts on `pending_stop` /
    `pending_save`. `config` is an `RLReadinessConfig`.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.losses: dict[str, dict[int, float]] = defaultdict(dict)  # set -> step -> held-out loss
        self.gaps: dict[str, dict[int, float]] = defaultdict(dict)
        self.passk: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))  # set -> k -> ..
        self.flags: list[Flag] = []
        self.pending_stop = False
        self.pending_save = False
        self._stop_after: int | None = None  # measurement steps left before stopping
        self._counted_step = -1  # the last step counted towards it

    # -- the watched signals -------------------------------------------------------------------
    def _pick(self, sets: Mapping[str, Any], wanted: str | None) -> str | None:
        return wanted if wanted is not None else next(iter(sets), None)

    def watched(self) -> tuple[str | None, str | None, int | None]:
        """(held-out set, pass@k set, large k) watched: the configured ones, else the first seen and largest k."""
        loss_set = self._pick(self.losses, self.config.loss_set)
        passk_set = self._pick(self.passk, self.config.passk_set)
        k = (self.config.passk_k or max(self.passk.get(passk_set, {}), default=None)) if passk_set else None
        return loss_set, passk_set, k

    def unmatched(self) -> list[str]:
        """Configured signals that the measurements so far do not contain (a typo'd set, a k never logged)."""
        c, out = self.config, []
        if c.loss_set is not None and self.losses and c.loss_set not in self.losses:
            out.append(f"loss_set={c.loss_set!r} (held-out sets logged: {sorted(self.losses)})")
        if c.passk_set is not None and self.passk and c.passk_set not in self.passk:
            out.append(f"passk_set={c.passk_set!r} (problem sets logged: {sorted(self.passk)})")
        _, passk_set, k = self.watched()
        if c.passk_k is not None and passk_set in self.passk and k not in self.passk[passk_set]:
            out.append(f"passk_k={k} (measured ks of {passk_set!r}: {sorted(self.passk[passk_set])})")
        return out

    def series(self, kind: str) -> list[tuple[int, float]]:
        """The watched signal of one kind ("loss", "gap", "passk", "pass1") as a step-ordered history."""
        loss_set, passk_set, k = self.watched()
        if kind in ("loss", "gap"):
            return sorted((self.losses if kind == "loss" else self.gaps).get(loss_set, {}).items())
        by_k = self.passk.get(passk_set, {})
        return sorted(by_k.get(1 if kind == "pass1" else k, {}).items())

    # -- updates ---------------------------------------------------------------------------------
    def add(self, record: LossRecord | GapRecord | PassAtKRecord) -> list[Flag]:
        """Take one measurement; return the flags it raised."""
        step, new = record.step, []
        if isinstance(record, LossRecord):
            new += self._nonfinite(f"held-out loss of {record.dataset!r}", step, record.loss)
            self.losses[record.dataset][step] = record.loss
        elif isinstance(record, GapRecord):
            self.gaps[record.dataset][step] = record.gap
        elif isinstance(record, PassAtKRecord):
            for k, value in record.pass_at_k.items():
                new += self._nonfinite(f"pass@{k} of {record.dataset!r}", step, value)
                self.passk[record.dataset][k][step] = value
        c = self.config
        loss = [(s, v) for s, v in self.series("loss") if np.isfinite(v)]
        if c.save_loss_minimum and loss and loss[-1][0] == step == min(loss, key=lambda sv: sv[1])[0]:
            self.pending_save = True
        known = {f.kind for f in self.flags + new}
        detectors = {
            "loss_turn": lambda: detect_loss_turn(loss, c.smoothing, c.loss_patience, c.loss_min_delta),
            "passk_decline": lambda: detect_passk_decline(
                self.series("passk"), self.series("pass1"), c.passk_patience, c.passk_min_delta
            ),
            "gap_widening": lambda: detect_gap_widening(self.series("gap"), c.gap_patience, c.gap_min_delta),
        }
        new += [flag for kind, detect in detectors.items() if kind not in known and (flag := detect()) is not None]
        self.flags += new
        if self._stop_after is None and should_stop(self.flags, c.early_stopping):
            self._stop_after = c.stop_patience + 1
        # Count measurement steps, not records: loss and pass@k both report on a save step.
        if self._stop_after is not None and not self.pending_stop and step != self._counted_step:
            self._counted_step = step
            self._stop_after -= 1
            self.pending_stop = self._stop_after <= 0
        return new

    def _nonfinite(self, what: str, step: int, value: float) -> list[Flag]:
        flag = detect_nonfinite(what, step, value)
        return [flag] if flag is not None and flag not in self.flags else []

    # -- resume -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        def series(data: Mapping[Any, Mapping[int, float]]) -> dict:
            return {str(key): series_to_json(sorted(points.items())) for key, points in data.items()}

        return {
            "losses": series(self.losses),
            "gaps": series(self.gaps),
            "passk": {name: series(by_k) for name, by_k in self.passk.items()},
            "flags": [asdict(f) for f in self.flags],
            "stop": [self._stop_after, self._counted_step, self.pending_stop],
        }

    def load_json(self, data: Mapping[str, Any]) -> None:
        def series(points: Sequence) -> dict[int, float]:
            return dict(series_from_json(points))

        self.losses.update({name: series(p) for name, p in data["losses"].items()})
        self.gaps.update({name: series(p) for name, p in data["gaps"].items()})
        for name, by_k in data["passk"].items():
            self.passk[name].update({int(k): series(p) for k, p in by_k.items()})
        self.flags = [Flag(**f) for f in data["flags"]]
        self._stop_after, self._counted_step, self.pending_stop = data["stop"]
