"""Config validation: every field's type from its annotation, ranges with messages that say what to fix.

A typo'd field, a string where a number belongs or a value out of range fails when the config is
built, with the class, the field, the value and what is allowed, instead of failing (or measuring
nonsense) hours later inside a training run.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Union

import numpy as np


def check_types(config: Any) -> None:
    """Every dataclass field against its annotation (a bool is not an int; an int is a float)."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, expected = getattr(config, f.name), hints[f.name]
        if not _matches(value, expected):
            raise TypeError(
                f"{type(config).__name__}.{f.name}={value!r}: expected {_describe(expected)}, "
                f"got {type(value).__name__}."
            )


def require(config: Any, name: str, ok: bool, allowed: str) -> None:
    """Raise `ValueError("<Config>.<name>=<value>: <allowed>.")` unless `ok`."""
    if not ok:
        raise ValueError(f"{type(config).__name__}.{name}={getattr(config, name)!r}: {allowed}.")


def annotation_parts(annotation: Any) -> tuple[Any, bool, bool]:
    """(scalar type, optional, is a list) of a config field's annotation: `T`, `T | None`, `list[T]`,
    `list[T] | None` (a tuple counts as a list). The one reading of annotations, for checks and CLI flags."""
    optional = False
    if typing.get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"config fields take one type or that type | None, not {annotation}")
        optional, annotation = len(options) < len(typing.get_args(annotation)), options[0]
    if typing.get_origin(annotation) in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return (args[0] if args else Any), optional, True
    return annotation, optional, False


def _matches(value: Any, expected: Any) -> bool:
    kind, optional, many = annotation_parts(expected)
    if value is None:
        return optional
    if many:
        return isinstance(value, (list, tuple)) and all(_scalar_matches(v, kind) for v in value)
    return _scalar_matches(value, kind)


def _scalar_matches(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if kind is str:
        return isinstance(value, str)
    if kind is dict or typing.get_origin(kind) is dict:
        return isinstance(value, dict)
    return True


def _describe(expected: Any) -> str:
    kind, optional, many = annotation_parts(expected)
    name = "dict" if typing.get_origin(kind) is dict else getattr(kind, "__name__", str(kind))
    return (f"a list of {name}" if many else name) + (" or None" if optional else "")


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when it has none): one-line errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def keyword_options(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """(the keyword options `factory` takes, whether it takes any keyword: a `**kwargs`)."""
    parameters = inspect.signature(factory).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name for p in parameters if p.kind in kinds}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def check_options(kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any] | None) -> None:
    """Raise, naming the `kind` ("Sampler", "Verifier"), its registered `name` and what it takes, when `options`
    has a keyword `factory` does not take (before anything is built: a misspelt option fails at construction)."""
    if not options:
        return
    named, any_keyword = keyword_options(factory)
    unknown = sorted(set(options) - named)
    if unknown and not any_keyword:
        raise ValueError(
            f"{kind} {name!r} takes no option {', '.join(map(repr, unknown))}; it takes: "
            f"{', '.join(sorted(named)) or 'none'}."
        )
