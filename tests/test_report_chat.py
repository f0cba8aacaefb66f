"""How a chat prompt and its completions read in the report page and in the trackers' completions tables."""

import json
import os
from types import SimpleNamespace

from sftrl_callbacks.report import completions_table, prompt_text, render_report
from sftrl_callbacks.trackers import table_markdown

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ana has 3 | 4 cards.\nHow many?"}]
COMPLETION = {"completion": "She has 7.\nThe answer is \\boxed{7}.", "correct": True, "tokens": 14, "truncated": False}


def test_completions_table_writes_chat_turns_not_a_python_list():
    result = SimpleNamespace(dataset="word", examples=[{"prompt": CHAT, "answer": "7", "completions": [COMPLETION]}])
    table = completions_table(result, step=5)
    row = dict(zip(table.columns, table.rows[0]))
    assert row["prompt"] == "system: Be brief.\nuser: Ana has 3 | 4 cards.\nHow many?" == prompt_text(CHAT)
    assert row["completion"] == COMPLETION["completion"] and row["expected"] == "7" and row["correct"] is True
    markdown = table_markdown(table)  # TensorBoard's text tab: one table row, line breaks as <br>, pipes escaped
    assert markdown.count("\n") == 2 and "user: Ana has 3 \\| 4 cards.<br>How many?" in markdown
    assert prompt_text("Q: 1+1=? A:") == "Q: 1+1=? A:"  # plain-text prompts stay as they are


def test_report_page_shows_turns_and_the_completion_apart(tmp_path):
    folder = tmp_path / "sftrl" / "passk"
    folder.mkdir(parents=True)
    result = {
        "dataset": "word",
        "step": 5,
        "pass_at_k": {"1": 0.5, "2": 0.75},
        "ci": {"1": {"low": 0.2, "high": 0.8}, "2": {"low": 0.5, "high": 1.0}},
        "extrapolated": {},
        "examples": [{"prompt": CHAT, "answer": "7", "completions": [COMPLETION]}],
    }
    (folder / "step-5_word.json").write_text(json.dumps(result))
    (tmp_path / "sftrl" / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "name": "sftrl/passk/word/pass@1", "value": 0.5}) + "\n"
    )
    png, page = render_report(str(tmp_path))
    assert os.path.getsize(png) > 0
    html = open(page, encoding="utf-8").read()
    assert "[{" not in html and "&#x27;role&#x27;" not in html  # no Python repr of the message list
    assert "<span class=role>user</span>Ana has 3 | 4 cards.\nHow many?" in html
    assert "<div class=completion>She has 7.\nThe answer is \\boxed{7}.</div>" in html
    assert "&#10004; correct &middot; expected <b>7</b> &middot; 14 tokens" in html
    assert "white-space:pre-wrap" in html
