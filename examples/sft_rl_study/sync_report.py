"""Copy the tables `analyze.py` printed into REPORT.md, so that the report cannot keep a stale copy.

    python examples/sft_rl_study/sync_report.py [--check]

REPORT.md's section 2 is the grid (`results/tables.md`) and section 3 the early-stopping pilot
(`turn_pilot/tables.md`); each `###` subsection there whose title is a `##` section of that tables file is
replaced by that section's body, text and tables alike. `--check` changes nothing and exits 1 when REPORT.md is
stale (tests/test_study_text.py runs it).
"""

from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "REPORT.md")
SOURCES = {"2.": os.path.join(HERE, "results", "tables.md"), "3.": os.path.join(HERE, "turn_pilot", "tables.md")}


def _sections(text: str, marker: str) -> dict[str, str]:
    """Title -> body of each section that starts with `marker` ('## ' or '### ') in `text`."""
    parts = re.split(rf"^{re.escape(marker)}(.*)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def synced(report: str) -> str:
    chapters = re.split(r"^(## .*)$", report, flags=re.M)
    out = [chapters[0]]
    for heading, body in zip(chapters[1::2], chapters[2::2]):
        number = heading[3:].split(" ", 1)[0]
        if number in SOURCES:
            with open(SOURCES[number], encoding="utf-8") as f:
                tables = _sections(f.read(), "## ")
            pieces = re.split(r"^(### .*)$", body, flags=re.M)
            for i in range(1, len(pieces), 2):
                title = pieces[i][4:].strip()
                if title in tables:
                    pieces[i + 1] = "\n\n" + tables[title].strip("\n") + "\n\n"
            body = "".join(pieces)
        out += [heading, body]
    return "".join(out)


def main(check: bool) -> int:
    with open(REPORT, encoding="utf-8") as f:
        report = f.read()
    new = synced(report)
    if check:
        if new != report:
            print("REPORT.md is stale: python examples/sft_rl_study/sync_report.py")
            return 1
        return 0
    with open(REPORT, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
