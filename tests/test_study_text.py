"""The study's short texts state only numbers that the study's scripts printed (examples/sft_rl_study/*/tables.md)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "examples", "sft_rl_study", "check_numbers.py")


def test_readme_and_docs_study_numbers_come_from_the_printed_tables():
    texts = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "study.md")]
    proc = subprocess.run([sys.executable, CHECK, *texts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_check_finds_a_number_no_table_printed(tmp_path):
    text = tmp_path / "claim.md"
    text.write_text("The pick ended lower by 0.0123456 (a number no table printed) in 5 of 5 runs.\n")
    proc = subprocess.run([sys.executable, CHECK, str(text)], capture_output=True, text=True)
    assert proc.returncode == 1 and "0.0123456 is in no printed table" in proc.stdout and "5 of 5" not in proc.stdout
