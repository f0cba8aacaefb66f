"""`CodeVerifier`: a completion is correct when its program passes the row's unit tests (`verifier="code"`).

The program runs in a sandbox (`sandbox.py`): a fresh interpreter per completion that can read only the standard
library, write nothing, open no socket and start no process. The tests never enter it. They run on this side, and
call the program's function through a channel that carries plain data only. An object whose `__eq__` always says
True, an early `exit`, a forged "passed" line, a patched builtin: none of these reaches the verdict.

What a row holds (column names are options):
- `test`: HumanEval's test code, a `def check(candidate)` that asserts; or a list of assert statements calling the
  function by name (MBPP); or a list of `{"input": [args...], "output": value}` pairs.
- `entry_point`: the function to call (MBPP rows may leave it out: it is read from the first assert).
- `code_prompt` (or the prompt column when it is code): the code the completion continues. Its helper functions and
  imports are given to the tests too, as HumanEval's tests use them.

The program: the first fenced code block of the completion when there is one (the prompt is put before it when the
block defines the function, so the prompt's imports and helpers are there; the block is read as a continuation of
the prompt otherwise), else the prompt followed by the completion (a continuation, as base models write code),
without the stop string that ended it.

Arguments and results cross as plain data (numbers, strings, bytes, lists, tuples, dicts, sets, None, bools, NaN
and infinities kept as they are). A test that needs the program's own types (an instance of a class it defines) or
that checks an argument mutated in place cannot be graded this way: the value does not cross, and the completion
fails, with the reason in `grade`'s outcome.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..sandbox import ISOLATIONS, SandboxedFunction, SandboxError, probe_isolation

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Outcome:
    """A completion's verdict and why: "passed", or the first failure (an assert, a timeout, a refused value)."""

    passed: bool
    reason: str


class _Stop(BaseException):
    """The program failed in a way no test may accept (timed out, died, returned what is not plain data): a
    BaseException, so a test's `except Exception` cannot take it for an exception the function raised."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The Codex paper's stop sequences for sampling a function body (the sampler keeps the one that ended a completion).
CODEX_STOP_STRINGS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def program_from(completion: str, prompt: str, entry_point: str, stop_strings: Sequence[str] = ()) -> str:
    """The program a completion stands for (see the module doc); a continuation that ends with one of
    `stop_strings` is read without it (it is where sampling stopped, not code)."""
    fenced = FENCE.search(completion)
    if fenced is None:
        for stop in stop_strings:
            if stop and completion.endswith(stop):
                completion = completion[: -len(stop)]
                break
        return prompt + completion
    block = fenced.group(1)
    if re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", block, re.MULTILINE):
        return prompt + "\n\n" + block
    return prompt + block


def entry_point_of(row: Mapping[str, Any], column: str, tests: Any) -> str:
    name = row.get(column)
    if isinstance(name, str) and name:
        return name
    if isinstance(tests, list) and tests and isinstance(tests[0], str):
        found = re.search(r"assert\s+\(?\s*(?:not\s+)?\(?([A-Za-z_]\w*)\s*\(", tests[0])
        if found:
            return found.group(1)
    raise ValueError(f"the row names no function to test: give it an {column!r} column")


class CodeVerifier:
    """Runs each completion's program in a sandbox against the row's tests (module doc). `timeout_s`: wall clock per
    completion, its tests included; `memory_mb`: the program's address space; `workers`: completions graded at
    once; `isolation`: "strict" (Landlock + seccomp + namespaces where available; fails closed without Landlock)
    or "process" (process limits and seccomp only, chosen knowingly); `check_canonical`: run each row's
    `canonical_solution`, where it has one, once per problem set at construction, and refuse a set whose own
    solution fails its tests; `stop_strings`: what a continuation that ended on one is read without (sampling keeps
    the stop string; the default is the Codex paper's list: give your sampling's own)."""

    bounded = True  # each completion has its own wall clock, enforced from here

    def __init__(
        self,
        tests_column: str = "test",
        entry_point_column: str = "entry_point",
        code_prompt_column: str = "code_prompt",
        prompt_column: str = "prompt",
        timeout_s: float = 10.0,
        memory_mb: int = 1024,
        workers: int = 2,
        isolation: str = "strict",
        check_canonical: bool = True,
        stop_strings: Sequence[str] = CODEX_STOP_STRINGS,
    ) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"CodeVerifier isolation={isolation!r}: use one of {ISOLATIONS}.")
        if not timeout_s > 0 or memory_mb < 64 or workers < 1:
            raise ValueError("CodeVerifier needs timeout_s > 0, memory_mb >= 64 and workers >= 1.")
        self.tests_column, self.entry_point_column = tests_column, entry_point_column
        self.code_prompt_column, self.prompt_column = code_prompt_column, prompt_column
        self.timeout_s, self.memory_mb, self.workers = timeout_s, memory_mb, workers
        self.isolation, self.check_canonical = isolation, check_canonical
        self.stop_strings = tuple(stop_strings)
        self.layers = probe_isolation(isolation)  # fails closed, in one line, before any completion is graded

    @property
    def description(self) -> str:
        return f"CodeVerifier (sandbox: {'; '.join(self.layers)})"

    # -- the contract ---------------------------------------------------------------------------------------------
    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        return [o.passed for o in self.grade(completions, rows)]

    def grade(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        """One `Outcome` per completion, `workers` sandboxes at a time."""
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
        if len(completions) <= 1 or self.workers == 1:
            return [self.grade_one(c, r) for c, r in zip(completions, rows)]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sftrl-code") as pool:
            return list(pool.map(self.grade_one, completions, rows))

    def check_problems(self, rows: Sequence[Mapping[str, Any]], name: str) -> None:
        """At construction: every row has tests that compile, and passes them with its own canonical solution.
        `name`: the set as messages name it ("problem set 'heldout'")."""
        failed = []
        for index, row in enumerate(rows):
            tests = self._tests(row, f"{name} row {index}")
            entry_point_of(row, self.entry_point_column, tests)
            if self.check_canonical and isinstance(row.get("canonical_solution"), str):
                outcome = self.grade_one(row["canonical_solution"], row)
                if not outcome.passed:
                    failed.append(f"row {index} ({row.get('task_id', '')}): {outcome.reason}")
        if failed:
            raise ValueError(
                f"The {name}: {len(failed)} of {len(rows)} rows fail their tests with their own canonical_solution, "
                f"so no completion could be graded right on them: {'; '.join(failed[:3])}. Fix the rows or pass "
                "verifier_options={'check_canonical': False}."
            )

    # -- one completion -------------------------------------------------------------------------------------------
    def grade_one(self, completion: str, row: Mapping[str, Any]) -> Outcome:
        tests = self._tests(row, "the row")
        entry = entry_point_of(row, self.entry_point_column, tests)
        prompt = self._code_prompt(row)
        deadline = time.time() + self.timeout_s
        try:
            with SandboxedFunction(
                program_from(completion, prompt, entry, self.stop_strings),
                entry,
                deadline,
                self.memory_mb,
                self.isolation,
            ) as function:
                return self._run_tests(tests, function, entry, prompt, deadline)
        except SandboxError as err:
            return Outcome(False, str(err))

    def _run_tests(self, tests: Any, function: SandboxedFunction, entry: str, prompt: str, deadline: float) -> Outcome:
        def candidate(*args: Any) -> Any:
            if time.time() > deadline:
                raise _Stop("timed out")
            try:
                return function(*args)
            except SandboxError as err:
                raise _Stop(str(err)) from None

        try:
            if isinstance(tests, str):
                namespace = self._helpers(prompt, entry, candidate)
                exec(_compiled(tests, "tests"), namespace)
                namespace["check"](candidate)
            elif tests and isinstance(tests[0], str):
                namespace = self._helpers(prompt, entry, candidate)
                for statement in tests:
                    exec(_compiled(statement, "test"), namespace)
            else:
                for pair in tests:
                    if candidate(*pair["input"]) != pair["output"]:
                        return Outcome(False, f"wrong output for input {pair['input']!r}"[:300])
        except _Stop as stop:
            return Outcome(False, stop.reason)
        except AssertionError as err:
            return Outcome(False, f"assertion failed{': ' + str(err) if str(err) else ''}"[:300])
        except Exception as err:  # noqa: BLE001 - an error the function raised into the tests, or a wrong type
            return Outcome(False, f"{type(err).__name__}: {err}"[:300])
        return Outcome(True, "passed")

    def _helpers(self, prompt: str, entry: str, candidate: Any) -> dict[str, Any]:
        """The prompt's imports and helper functions (trusted: they are the row's), with the function under test
        bound to the sandboxed one."""
        namespace: dict[str, Any] = {"__name__": "__sftrl_tests__"}
        helpers = _helpers_source(prompt) if prompt else ""
        if helpers:
            exec(_compiled(helpers, "prompt"), namespace)
        namespace[entry] = candidate
        return namespace

    def _tests(self, row: Mapping[str, Any], where: str) -> Any:
        tests = row.get(self.tests_column)
        if isinstance(tests, str) and tests.strip():
            _compiled(tests, f"tests of {where}")
            if not re.search(r"^def\s+check\s*\(", tests, re.MULTILINE):
                raise ValueError(f"{where}: its {self.tests_column!r} code defines no check(candidate)")
            return tests
        if isinstance(tests, (list, tuple)) and tests:
            if all(isinstance(t, str) for t in tests):
                for statement in tests:
                    _compiled(statement, f"a test of {where}")
                return list(tests)
            if all(isinstance(t, Mapping) and "input" in t and "output" in t for t in tests):
                return list(tests)
        raise ValueError(
            f"{where} has no tests in column {self.tests_column!r}: give HumanEval's check(candidate) code, a list "
            "of assert statements, or a list of {'input': [...], 'output': ...} pairs."
        )

    def _code_prompt(self, row: Mapping[str, Any]) -> str:
        """The row's code prompt; else its prompt when that is code (a function header, as HumanEval's, which
        parses once a body is added), not a task in words (as MBPP's)."""
        if isinstance(row.get(self.code_prompt_column), str):
            return row[self.code_prompt_column]
        prompt = row.get(self.prompt_column)
        return prompt if isinstance(prompt, str) and _helpers_source(prompt) else ""


def _helpers_source(prompt: str) -> str:
    """What of the prompt the tests may run: the prompt, or the prompt with a body for its open function header
    (`def f(x):` alone does not parse); "" when it is not code."""
    for source in (prompt, prompt.rstrip() + "\n    pass\n"):
        try:
            _compiled(source, "prompt")
        except ValueError:
            continue
        return source
    return ""


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, what: str) -> Any:
    """Trusted code (the row's tests and prompt), compiled once, with its asserts kept under `python -O`."""
    try:
        return compile(source, f"<{what}>", "exec", dont_inherit=True, optimize=0)
    except SyntaxError as err:
        raise ValueError(f"{what}: does not parse: {err}") from None
