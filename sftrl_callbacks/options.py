"""Command-line flags and reference tables generated from the config dataclasses, so that a field added to a
config reaches `sftrl eval` and the docs without a second copy of its name, type, default or help.

A field `max_new_tokens: int` becomes `--max-new-tokens INT`; `bool` fields get `--x / --no-x`; list fields
take several values (`--stop-strings "####" "\\n"`); dict fields take KEY=VALUE pairs, each value read as JSON
when it parses (`--sampler-options max_model_len=512 enforce_eager=true`); optional fields also take `none`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Iterable
from typing import Any

from .checks import annotation_parts


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _parser_for(kind: type, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _flagged_fields(config_cls: type, skip: Iterable[str]) -> list[dataclasses.Field]:
    unknown = set(skip) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:  # a renamed field must not silently gain a flag
        raise ValueError(f"{config_cls.__name__} has no field(s) {sorted(unknown)} to skip")
    return [f for f in dataclasses.fields(config_cls) if f.name not in set(skip)]


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, skip: Iterable[str] = ()) -> None:
    """One flag per field of `config_cls` but those in `skip`, in a group named after it."""
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} fields", config_cls.__doc__)
    for f in _flagged_fields(config_cls, skip):
        kind, optional, many = annotation_parts(hints[f.name])
        default = _default(f)
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata.get('help', '')} (default: {default!r})"
        if kind is bool and not many:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is dict:
            group.add_argument(
                flag, dest=f.name, type=_pair, nargs="*", action=_Pairs, default=default, metavar="KEY=VALUE", help=text
            )
        else:
            nargs = "+" if many else None
            metavar = kind.__name__.upper()
            parse = _parser_for(kind, optional)
            group.add_argument(flag, dest=f.name, type=parse, nargs=nargs, default=default, metavar=metavar, help=text)


def config_from_flags(ns: argparse.Namespace, config_cls: type, skip: Iterable[str] = ()) -> Any:
    """`config_cls` built from the flags `add_config_flags` added (skipped fields keep their defaults; the
    config's own checks run as usual)."""
    return config_cls(**{f.name: getattr(ns, f.name) for f in _flagged_fields(config_cls, skip)})


class _Pairs(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, dict(values))


def _pair(text: str) -> tuple[str, Any]:
    """KEY=VALUE of a dict flag; the value as JSON when it parses (numbers, true/false, null), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def reference_table(config_cls: type) -> str:
    """A Markdown table of the fields of `config_cls`: name, type, default, help."""
    hints = typing.get_type_hints(config_cls)
    lines = ["| field | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(config_cls):
        kind = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("|", "\\|")
        text = f.metadata.get("help", "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{f.name}` | `{kind}` | `{_default(f)!r}` | {text} |")
    return "\n".join(lines) + "\n"


def reference_page() -> str:
    """docs/configuration.md: every config's fields, from the dataclasses themselves."""
    from .callbacks import HeldOutLossConfig, PassAtKCallbackConfig, RLReadinessConfig
    from .contracts import SamplingParams

    configs = [
        (HeldOutLossConfig, "`HeldOutLossCallback(datasets, config=None, sinks=(), **fields)`"),
        (PassAtKCallbackConfig, "`PassAtKCallback(problems, verifier, config=None, sampler=None, sinks=(), **fields)`"),
        (RLReadinessConfig, "`RLReadinessCallback(config=None, sinks=(), watch=None, **fields)`"),
        (SamplingParams, "what a `Sampler` receives on each call (built from `PassAtKConfig`)"),
    ]
    parts = [
        "# Configuration reference\n\n",
        "Every field below can be passed as a keyword to its callback (`PassAtKCallback(problems, n=64)`) or in the "
        "config object (`config=PassAtKCallbackConfig(n=64)`), and every `PassAtKConfig` field is also a flag of "
        "`sftrl eval` (`--max-new-tokens 512`). A wrong type or value fails when the config is built, naming the "
        "field. Generated by `python -m sftrl_callbacks.options > docs/configuration.md` from the fields' help "
        "text; a test fails when this page is stale.\n",
    ]
    for config_cls, used_by in configs:
        doc = " ".join((config_cls.__doc__ or "").split())
        parts.append(f"\n## {config_cls.__name__}\n\n{doc} Used by {used_by}.\n\n{reference_table(config_cls)}")
    parts.append(registry_tables())
    return "".join(parts)


def registry_tables() -> str:
    """The library's verifiers and samplers by name, with the options `verifier_options` / `sampler_options` take
    (names registered from outside the library are left out, so the page does not depend on what else is imported)."""
    import inspect

    from . import toy  # noqa: F401  (registers "toy-steps")
    from .contracts import SAMPLERS, sampler_factory
    from .verifiers import VERIFIERS

    out = [
        "\n## Verifiers and samplers by name\n\n`verifier=NAME` with `verifier_options={...}` and `sampler=NAME` with "
        "`sampler_options={...}` (or `--verifier-options KEY=VALUE` / `--sampler-options KEY=VALUE` in `sftrl eval`); "
        "an option not listed is refused when the callback is built. `register_verifier` / `register_sampler` add "
        "names.\n\n| kind | name | class | options (default) |\n|---|---|---|---|\n"
    ]
    for kind, registry, resolve in (("verifier", VERIFIERS, VERIFIERS.get), ("sampler", SAMPLERS, sampler_factory)):
        for name in sorted(registry):
            factory = resolve(name)
            if not factory.__module__.startswith("sftrl_callbacks."):
                continue  # registered by the user's code (or a test): not part of the library's reference
            options = [
                f"`{p.name}` ({p.default!r})" if p.default is not inspect.Parameter.empty else f"`{p.name}`"
                for p in inspect.signature(factory).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            extra = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
            listed = (", ".join(options) + (", and any other keyword (passed on)" if extra else "")).replace("|", "\\|")
            out.append(f"| {kind} | `{name}` | `{factory.__name__}` | {listed or 'none'} |\n")
    return "".join(out)


if __name__ == "__main__":
    print(reference_page(), end="")
