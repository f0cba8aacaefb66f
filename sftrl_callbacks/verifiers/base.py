"""The verifier contract, the check of what a verifier returns, and the guard every call goes through.

A verifier is anything with `check(completions, rows)` returning one verdict per completion: a bool, or a number
(a score: the completion counts as correct for pass@k when it is at or above `PassAtKConfig.score_threshold`).
Optional attributes a verifier may set, read only here (`trait`):

- `bounded = True`: it limits its own time per completion (worker processes); it is then called directly, without
  `verifier_timeout_s`.
- `returns_scores = True`: its verdicts are scores (a reward), so every measurement logs their mean and interval
  (`sftrl/passk/<set>/mean_score`); without it the mean is logged only by measurements with a verdict other than
  0 / 1.
- `check_problems(rows, where)`: a method called once per problem set before any training step, on the rows a
  measurement uses, to raise a one-line `ValueError` for rows it could never grade right.
- `description`: what it is, recorded in every result instead of the class name (a code verifier names its sandbox's
  layers there).
- `reads_answer_region = False`: it gets the whole completion, thinking included, instead of the answer region
  (`RewardFunctionVerifier` by default, as TRL's GRPOTrainer gives completions to reward functions).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger("sftrl_callbacks")

TRAITS = {"bounded": False, "returns_scores": False, "reads_answer_region": True}


@runtime_checkable
class Verifier(Protocol):
    """Anything with `check`; the optional attributes are in the module doc."""

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Sequence[bool | float]:
        """One verdict per completion, True / False or a score; `rows[i]` is the problem row of completion i."""
        ...


def trait(verifier: Any, name: str) -> bool:
    """A verifier's optional attribute `name` (see the module doc), or its default."""
    return bool(getattr(verifier, name, TRAITS[name]))


class VerifierOutputError(ValueError):
    """A verifier returned something other than one bool or finite number per completion."""


def check_verdicts(verifier: Verifier, verdicts: Any, expected: int) -> list[float]:
    """`verdicts` as scores (1.0 for True, 0.0 for False), or a `VerifierOutputError` that names the verifier and the
    fault."""
    name = type(verifier).__name__
    if isinstance(verdicts, (str, bytes, Mapping, set)) or not hasattr(verdicts, "__len__"):
        raise VerifierOutputError(
            f"Verifier {name}.check returned a {type(verdicts).__name__}; return a list with one bool per completion."
        )
    if len(verdicts) != expected:
        raise VerifierOutputError(
            f"Verifier {name}.check returned {len(verdicts)} verdicts for {expected} completions; "
            "return exactly one bool per completion, in order."
        )
    scores = []
    for i, verdict in enumerate(verdicts):
        if isinstance(verdict, (bool, np.bool_, int, float, np.integer, np.floating)) and math.isfinite(verdict):
            scores.append(float(verdict))
        else:
            raise VerifierOutputError(
                f"Verifier {name}.check returned {verdict!r} ({type(verdict).__name__}) for completion {i}; "
                "return True / False or a finite score per completion."
            )
    return scores


class GuardedVerifier:
    """Calls a verifier with its output checked and, unless it is `bounded`, with a time limit; returns scores.

    A call that takes longer than `timeout_s` counts as wrong (score 0) for all its completions and is logged;
    Python cannot stop the thread it runs in, so while that call is still running every later call counts as
    wrong at once instead of starting another (a verifier that can spin forever should bound itself, as
    `MathVerifyVerifier` does with worker processes). `timeout_s=None` calls the verifier in the caller's thread
    (needed for verifiers that use signals).
    """

    def __init__(self, verifier: Verifier, timeout_s: float | None) -> None:
        self.verifier, self.timeout_s = verifier, timeout_s
        self.name = type(verifier).__name__
        self.description = str(getattr(verifier, "description", None) or self.name)
        self.timeouts = 0  # completions counted wrong because their call timed out
        self.returns_scores = trait(verifier, "returns_scores")
        self.reads_answer_region = trait(verifier, "reads_answer_region")
        self._stuck: threading.Thread | None = None

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
        if not completions:
            return []
        if self.timeout_s is None or trait(self.verifier, "bounded"):
            return check_verdicts(self.verifier, self.verifier.check(completions, rows), len(completions))
        if self._stuck is not None and self._stuck.is_alive():
            self.timeouts += len(completions)
            return [0.0] * len(completions)
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["verdicts"] = self.verifier.check(completions, rows)
            except BaseException as err:  # re-raised in the caller's thread
                box["error"] = err

        worker = threading.Thread(target=call, name=f"sftrl-verifier-{self.name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._stuck = worker
            self.timeouts += len(completions)
            logger.error(
                "sftrl: verifier %s gave no answer within verifier_timeout_s=%g s; its completions count as wrong, "
                "and so do later ones until that call returns",
                self.name,
                self.timeout_s,
            )
            return [0.0] * len(completions)
        if "error" in box:
            raise box["error"]
        return check_verdicts(self.verifier, box["verdicts"], len(completions))


def probe_verifier(
    verifier: GuardedVerifier,
    row: Mapping[str, Any],
    where: str,
    threshold: float = 1.0,
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Check a verifier once, on an empty completion for `row`, before any training step depends on it; and let it
    check the `rows` it will grade, when it has a `check_problems(rows, where)` (e.g. a code verifier runs each
    row's canonical solution against its tests)."""
    check_rows = getattr(verifier.verifier, "check_problems", None)
    if rows is not None and callable(check_rows):
        check_rows(rows, where)
    before = verifier.timeouts
    try:
        score = verifier.check([""], [row])[0]
    except VerifierOutputError:
        raise
    except Exception as err:
        hint = ""
        if "thread" in str(err) and verifier.timeout_s is not None:  # e.g. math-verify's signal-based timeouts
            hint = " (it needs the main thread: pass verifier_timeout_s=None to call it there, without a time limit)"
        raise ValueError(
            f"Verifier {verifier.name} failed on the first problem of {where}: {type(err).__name__}: {err}{hint}"
        ) from err
    if verifier.timeouts > before:
        raise ValueError(
            f"Verifier {verifier.name} gave no answer within {verifier.timeout_s:g} s for one empty completion "
            f"({where}); make it faster or raise verifier_timeout_s."
        )
    if score >= threshold:
        raise ValueError(
            f"Verifier {verifier.name} counts an empty completion as correct for the first problem of {where} "
            f"(score {score:g} >= score_threshold={threshold:g}): every pass@k would be inflated; check its logic "
            "(or raise score_threshold)."
        )
