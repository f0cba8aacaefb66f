"""The study's texts state only numbers that the study's scripts printed (examples/sft_rl_study/*/tables.md)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "examples", "sft_rl_study", "check_numbers.py")
SYNC = os.path.join(ROOT, "examples", "sft_rl_study", "sync_report.py")


def test_readme_docs_and_report_numbers_come_from_the_printed_tables():
    proc = subprocess.run([sys.executable, CHECK], capture_output=True, text=True)  # the three texts by default
    assert proc.returncode == 0, proc.stdout
    assert "REPORT.md" not in proc.stdout and "0 number(s)" in proc.stdout


def test_the_check_finds_a_number_no_table_printed(tmp_path):
    text = tmp_path / "claim.md"
    text.write_text("With transformers 5.24.9 the pick ended lower by 0.0123456 (in no table) in 5 of 5 runs.\n")
    proc = subprocess.run([sys.executable, CHECK, str(text)], capture_output=True, text=True)
    assert proc.returncode == 1 and "0.0123456 is in no printed table" in proc.stdout
    assert "1 number(s) not from" in proc.stdout  # neither the version nor "5 of 5"


def test_report_holds_the_tables_as_printed():
    """REPORT.md's copies of the printed tables are the tables (a stale copy kept a degenerate interval the analysis
    no longer prints)."""
    proc = subprocess.run([sys.executable, SYNC, "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
