"""Writing a benchmark's printed output into a docs page, between its markers, so that the numbers there are
always ones a script printed: `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`."""

from __future__ import annotations

import os
import re

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def replace_block(page: str, name: str, text: str) -> str:
    """Put `text` between the `name` markers of docs/`page`; returns the page's path."""
    path = os.path.normpath(os.path.join(DOCS, page))
    block = re.compile(rf"(<!-- {re.escape(name)}:begin.*?-->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if not block.search(doc):
        raise SystemExit(f"{path} has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    with open(path, "w", encoding="utf-8") as f:
        f.write(block.sub(lambda m: m[1] + text + m[2], doc))
    return path
