"""Verifiers: is a sampled completion correct? One module per family, one registry.

- `answer`: `AnswerVerifier`, the text after `####` (or any regex group), exact or numeric match.
- `math-verify`: `MathVerifyVerifier`, math-verify's parse + verify in isolated workers (`pool`).
- `code`: `CodeVerifier`, the completion's program against the row's unit tests, in a sandbox (`sandbox.py`).
- `RewardFunctionVerifier` (`reward_function`): any TRL reward function, its rewards as scores (passed as an
  object: a function has no name to register).
- `base`: the `Verifier` contract, its optional attributes, and the guard every call goes through.
- `reasoning`: the thinking-block rules every verifier's input goes through (the answer region).

A new family is one module and one `register_verifier(name, factory)`; a name then works everywhere a built-in one
does: `PassAtKCallback(verifier=name, verifier_options={...})`, YAML recipes, background jobs and `sftrl eval
--verifier name --verifier-options KEY=VALUE`. Options are checked against the factory's signature when the verifier
is made, so a misspelt option fails there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..checks import check_options, keyword_options
from .answer import AnswerVerifier
from .base import GuardedVerifier, Verifier, VerifierOutputError, check_verdicts, probe_verifier, trait
from .code import CodeVerifier
from .math_verify import MathVerifyVerifier
from .pool import IsolatedPool
from .reasoning import ReasoningFormat, Region
from .reward_function import RewardFunctionVerifier

# name -> factory(**options); the toy world registers "toy-steps" when `sftrl_callbacks.toy` is imported.
VERIFIERS: dict[str, Callable[..., Verifier]] = {
    "answer": AnswerVerifier,
    "math-verify": MathVerifyVerifier,
    "code": CodeVerifier,
}


def register_verifier(name: str, factory: Callable[..., Verifier]) -> None:
    """Let `make_verifier(name, options)` (and so `PassAtKCallback(verifier=name)`, `sftrl eval --verifier name` and
    background jobs) build `factory(**options)`. A factory that has an `answer_column` parameter gets the config's
    `answer_column` unless the options set it; it takes only the options it names."""
    if not name or not callable(factory):
        raise ValueError("register_verifier(name, factory) needs a non-empty name and a callable factory.")
    VERIFIERS[name] = factory


def check_verifier_options(spec: str | Verifier, options: Mapping[str, Any] | None) -> None:
    """Raise, naming the verifier and what it takes, when `options` do not fit it (before anything is built)."""
    if not options:
        return
    if not isinstance(spec, str):
        raise ValueError(
            f"verifier_options={dict(options)!r} apply to a verifier named by a string; set the options on the "
            f"{type(spec).__name__} object itself."
        )
    check_options("Verifier", spec, _factory(spec), options)


def make_verifier(
    spec: str | Verifier, options: Mapping[str, Any] | None = None, answer_column: str | None = None
) -> Verifier:
    """A verifier from a registered name ("answer", "math-verify", "toy-steps", ...) made with `options`, or the
    object itself. `answer_column` reaches the factories that read one (see `register_verifier`)."""
    check_verifier_options(spec, options)
    if not isinstance(spec, str):
        if not isinstance(spec, Verifier):
            raise TypeError(f"{type(spec).__name__} is not a Verifier: it needs check(completions, rows).")
        return spec
    factory = _factory(spec)
    kwargs = dict(options or {})
    if answer_column is not None and "answer_column" in keyword_options(factory)[0]:
        kwargs.setdefault("answer_column", answer_column)
    return factory(**kwargs)


def _factory(name: str) -> Callable[..., Verifier]:
    if name not in VERIFIERS:
        raise ValueError(
            f"Unknown verifier {name!r}; choose one of {sorted(VERIFIERS)} or pass a Verifier object "
            "('toy-steps' is there once sftrl_callbacks.toy is imported)."
        )
    return VERIFIERS[name]


__all__ = [
    "VERIFIERS",
    "AnswerVerifier",
    "CodeVerifier",
    "GuardedVerifier",
    "IsolatedPool",
    "MathVerifyVerifier",
    "ReasoningFormat",
    "Region",
    "RewardFunctionVerifier",
    "Verifier",
    "VerifierOutputError",
    "check_verdicts",
    "check_verifier_options",
    "make_verifier",
    "probe_verifier",
    "register_verifier",
    "trait",
]
