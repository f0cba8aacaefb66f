"""What the callbacks measure, as typed records, and the one place metric names are built and parsed.

Measuring callbacks publish records to their run (`hub.RunHub`); `RLReadinessCallback` reads their
fields, never metric-name strings. Sinks receive flat `{name: value}` dicts built here. Set names may
contain `/` (`math/val`): a name is `sftrl/<group>/<set>/<field>`, where neither the group nor the
field contains `/`, so the set is whatever lies between them.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

PREFIX = "sftrl"


def heldout_name(dataset: str, what: str) -> str:
    """`sftrl/heldout/<set>/<what>`, e.g. what = "loss", "loss_min", "gap"."""
    return f"{PREFIX}/heldout/{dataset}/{what}"


def passk_name(dataset: str, what: str | int, extrapolated: bool = False) -> str:
    """`sftrl/passk/<set>/pass@<k>` for an int k (`pass@<k>_extrapolated` when estimated above n), else the field."""
    if isinstance(what, int):
        what = f"pass@{what}_extrapolated" if extrapolated else f"pass@{what}"
    return f"{PREFIX}/passk/{dataset}/{what}"


def readiness_name(what: str) -> str:
    return f"{PREFIX}/readiness/{what}"


@dataclass(frozen=True)
class MetricName:
    group: str  # "heldout" | "passk" | "readiness"
    dataset: str | None
    field: str

    @property
    def k(self) -> int | None:
        """k of a measured `pass@<k>` field (None for extrapolated values and other fields)."""
        if self.group == "passk" and self.field.startswith("pass@") and self.field[5:].isdigit():
            return int(self.field[5:])
        return None


def parse_name(name: str) -> MetricName | None:
    """Inverse of the builders above; None for names that are not sftrl metrics."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != PREFIX:
        return None
    if parts[1] == "readiness":
        return MetricName("readiness", None, "/".join(parts[2:]))
    if len(parts) < 4:
        return None
    return MetricName(parts[1], "/".join(parts[2:-1]), parts[-1])


def file_safe(dataset: str) -> str:
    """A set name usable as part of a file name (reversible: `math/val` -> `math%2Fval`)."""
    return urllib.parse.quote(dataset, safe="")


@dataclass(frozen=True)
class LossRecord:
    """One held-out loss measurement of one set (`gap` is None until the training loss of the step is known)."""

    step: int
    dataset: str
    loss: float
    loss_min: float | None
    loss_min_step: int | None
    loss_smoothed: float | None
    n_tokens: int | None = None
    n_examples: int | None = None
    source: str = "sftrl"  # "sftrl" (computed here) or "trainer_eval" (re-logged eval_loss)
    # with a reasoning format and thinking tokens in the set: the loss over thinking tokens and over the rest
    loss_thinking: float | None = None
    loss_answer: float | None = None
    thinking_tokens: int | None = None

    def metrics(self) -> dict[str, float | None]:
        out = {
            heldout_name(self.dataset, "loss"): self.loss,
            heldout_name(self.dataset, "loss_min"): self.loss_min,
            heldout_name(self.dataset, "loss_min_step"): self.loss_min_step,
            heldout_name(self.dataset, "loss_smoothed"): self.loss_smoothed,
        }
        if self.loss_thinking is not None:
            out[heldout_name(self.dataset, "loss_thinking")] = self.loss_thinking
        if self.loss_answer is not None:
            out[heldout_name(self.dataset, "loss_answer")] = self.loss_answer
        return out

    def context(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "source": self.source}
        if self.n_tokens is not None:
            out.update(n_tokens=self.n_tokens, n_examples=self.n_examples)
        if self.thinking_tokens is not None:
            out.update(thinking_tokens=self.thinking_tokens)
        return out


@dataclass(frozen=True)
class GapRecord:
    """Held-out loss minus the training loss the trainer logged at the same step."""

    step: int
    dataset: str
    gap: float
    train_loss: float
    train_loss_step: int

    def metrics(self) -> dict[str, float]:
        return {heldout_name(self.dataset, "gap"): self.gap}

    def context(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "train_loss": self.train_loss, "train_loss_step": self.train_loss_step}


@dataclass(frozen=True)
class PassAtKRecord:
    """One pass@k measurement of one set: measured ks (unbiased) and extrapolated ks, kept apart."""

    step: int
    dataset: str
    pass_at_k: dict[int, float]
    extrapolated: dict[int, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # mean_completion_tokens, truncation_rate, ...
    context_: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {passk_name(self.dataset, k): v for k, v in self.pass_at_k.items()}
        out.update({passk_name(self.dataset, k, extrapolated=True): v for k, v in self.extrapolated.items()})
        out.update({passk_name(self.dataset, name): v for name, v in self.extra.items()})
        return out

    def context(self) -> dict[str, Any]:
        return dict(self.context_)


Record = LossRecord | GapRecord | PassAtKRecord
