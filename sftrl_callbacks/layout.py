"""Where every file the library writes lives: one function per file kind, one name per kind.

    <output_dir>/sftrl/metrics.jsonl                every metric and event, one JSON object a line
    <output_dir>/sftrl/passk/step-<step>_<set>.json  one pass@k measurement (counts, intervals, samples)
    <output_dir>/sftrl/rl_start.json                 the RL-start choice; its protected copy in rl_start/
    <output_dir>/sftrl/report.png, report.html       `sftrl report`
    <output_dir>/sftrl/background/                   background pass@k: checkpoint copies, inputs, worker.log
    <checkpoint>/sftrl/passk_<set>.json              the pass@k of that checkpoint (a copy of its step's file)
    <checkpoint>/sftrl/monitor_state.json            the callbacks' state, restored on resume
    <checkpoint>/sftrl/eval.json, eval_passk_<set>.json   `sftrl eval` of that checkpoint

A `/` in a set name is written as `%2F` in file names (`records.file_safe`).
"""

from __future__ import annotations

import glob
import os

from .records import file_safe

FOLDER = "sftrl"
MONITOR_STATE = "monitor_state.json"


def run_dir(output_dir: str) -> str:
    return os.path.join(output_dir, FOLDER)


def metrics_path(output_dir: str) -> str:
    return os.path.join(run_dir(output_dir), "metrics.jsonl")


def passk_step_path(output_dir: str, step: int, dataset: str) -> str:
    return os.path.join(run_dir(output_dir), "passk", f"step-{step}_{file_safe(dataset)}.json")


def passk_step_files(output_dir: str) -> list[str]:
    """Every `passk_step_path` file of a run."""
    return sorted(glob.glob(os.path.join(run_dir(output_dir), "passk", "step-*_*.json")))


def completions_path(output_dir: str, step: int, dataset: str) -> str:
    """Every completion of one pass@k measurement (`save_completions`), gzip-compressed JSONL."""
    return os.path.join(run_dir(output_dir), "completions", f"step-{step}_{file_safe(dataset)}.jsonl.gz")


def rl_start_path(output_dir: str) -> str:
    return os.path.join(run_dir(output_dir), "rl_start.json")


def rl_start_copy_dir(output_dir: str) -> str:
    return os.path.join(run_dir(output_dir), "rl_start")


def report_paths(output_dir: str) -> tuple[str, str]:
    """(PNG, HTML) of `sftrl report`."""
    return os.path.join(run_dir(output_dir), "report.png"), os.path.join(run_dir(output_dir), "report.html")


def background_dir(output_dir: str) -> str:
    return os.path.join(run_dir(output_dir), "background")


def checkpoint_dir(output_dir: str, step: int) -> str:
    """The trainer's own folder name for the checkpoint of `step`."""
    return os.path.join(output_dir, f"checkpoint-{step}")


def checkpoint_passk_path(checkpoint: str, dataset: str) -> str:
    return os.path.join(checkpoint, FOLDER, f"passk_{file_safe(dataset)}.json")


def monitor_state_path(checkpoint: str) -> str:
    return os.path.join(checkpoint, FOLDER, MONITOR_STATE)


def eval_path(checkpoint: str) -> str:
    return os.path.join(checkpoint, FOLDER, "eval.json")


def eval_passk_path(checkpoint: str, dataset: str) -> str:
    return os.path.join(checkpoint, FOLDER, f"eval_passk_{file_safe(dataset)}.json")


def eval_completions_path(checkpoint: str, dataset: str) -> str:
    """Every completion of `sftrl eval --save-completions`, gzip-compressed JSONL."""
    return os.path.join(checkpoint, FOLDER, f"eval_completions_{file_safe(dataset)}.jsonl.gz")


def background_done_path(checkpoint_copy: str) -> str:
    """Written by the background worker once every set of `checkpoint_copy` is measured and saved."""
    return os.path.join(checkpoint_copy, FOLDER, "background_done.json")
