"""Config validation: every field's type from its annotation, ranges with messages that say what to fix.

A typo'd field, a string where a number belongs or a value out of range fails when the config is
built, with the class, the field, the value and what is allowed, instead of failing (or measuring
nonsense) hours later inside a training run.
"""

from __future__ import annotations

import types
import typing
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


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0] if args else Any) for v in value)
    if expected is bool:
        return isinstance(value, (bool, np.bool_))
    if expected is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if expected is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if expected is str:
        return isinstance(value, str)
    return True


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(expected))
    if expected is type(None):
        return "None"
    if origin in (list, tuple):
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(expected, "__name__", str(expected))


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when it has none): one-line errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
