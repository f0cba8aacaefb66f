"""Pass@k of saved checkpoints in a separate process, so training does not wait for sampling.

`PassAtKCallback(background=True)` hands each saved checkpoint to a `BackgroundPassAtK`: the checkpoint
is hard-linked into `<output_dir>/sftrl/background/` (so `save_total_limit` rotation cannot delete it
under the job), and a child process (`python -m sftrl_callbacks.background JOB.json`) measures it with
`measure_pass_at_k`, the same code and config as in training, on `background_device`. Jobs run one at a
time, in order; the callback collects finished ones at every step and at the end of training, and
publishes them at the checkpoint's own step.

The job samples with the trainer's own tokenizer, pickled at train start, not the checkpoint's: a tokenizer
built in code can load back from a checkpoint as another one (`AutoTokenizer` may pick the model type's own
class, which tokenizes differently), and the numbers would then be silently wrong.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from datasets import Dataset

from . import layout
from .checkpoints import link_copy, sampling_source
from .contracts import PassAtKConfig, PassAtKResult, load_result, make_sampler
from .io import atomic_file, write_json_atomic
from .records import file_safe
from .verifiers import VERIFIERS, make_verifier

logger = logging.getLogger("sftrl_callbacks")


class BackgroundPassAtK:
    """A queue of checkpoints measured one at a time by a child process (`PassAtKCallback.background_jobs` with
    background=True; without it the callback measures saved checkpoints itself)."""

    def __init__(
        self,
        output_dir: str,
        problems: Mapping[str, Dataset],
        verifier: str,
        config: PassAtKConfig,
        tokenizer: Any,
        device: str = "cpu",
    ) -> None:
        self.output_dir, self.workdir = output_dir, layout.background_dir(output_dir)
        self.problems, self.verifier = dict(problems), verifier
        self.config, self.device = config, device
        self._queue: list[tuple[int, str]] = []  # (step, linked checkpoint copy)
        self._running: tuple[int, str, subprocess.Popen, float] | None = None
        self._problem_files: dict[str, str] | None = None
        prompts = [prompt for ds in self.problems.values() for prompt in config.used_prompts(ds)]
        self._tokenizer_file = hand_over_tokenizer(tokenizer, prompts, os.path.join(self.workdir, "tokenizer.pkl"))

    def submit(self, step: int, checkpoint: str) -> None:
        """Queue `checkpoint`; it may be the copy a stopped run left here (then it is measured as it is)."""
        copy = self.copy_path(step)
        if os.path.abspath(checkpoint) != os.path.abspath(copy):
            shutil.rmtree(copy, ignore_errors=True)  # left by an interrupted earlier run
            link_copy(checkpoint, copy)
        self._queue.append((step, copy))
        self._start_next()

    def copy_path(self, step: int) -> str:
        return os.path.join(self.workdir, f"checkpoint-{step}")

    @property
    def pending(self) -> int:
        return len(self._queue) + (self._running is not None)

    @property
    def pending_steps(self) -> list[int]:
        """Steps submitted and not yet collected, in order."""
        return ([self._running[0]] if self._running else []) + [step for step, _ in self._queue]

    def collect(self) -> list[tuple[int, dict[str, PassAtKResult] | str]]:
        """Finished jobs since the last call: (step, {set: result}) or (step, error text)."""
        if self._running is None:
            return []
        step, copy, proc, started = self._running
        if proc.poll() is None:
            return []
        self._running = None
        out: dict[str, PassAtKResult] | str
        if proc.returncode == 0:
            out = {name: load_result(self._result_path(copy, name)) for name in self.problems}
        else:
            with open(layout.background_job_files(copy)[1], encoding="utf-8", errors="replace") as f:
                tail = f.read()[-2000:]
            seconds = time.time() - started
            out = f"background pass@k of step {step} exited with {proc.returncode} after {seconds:.0f} s:\n{tail}"
        shutil.rmtree(copy, ignore_errors=True)
        self._start_next()
        return [(step, out)]

    def wait(self) -> list[tuple[int, dict[str, PassAtKResult] | str]]:
        """Collect until the queue is empty."""
        done = []
        while self.pending:
            done += self.collect()
            time.sleep(0.2)
        return done

    # -- internals ----------------------------------------------------------------------------------
    def _start_next(self) -> None:
        if self._running is not None or not self._queue:
            return
        step, copy = self._queue.pop(0)
        job = {
            "checkpoint": copy,
            "step": step,
            "problems": self._write_problems(),
            "tokenizer": self._tokenizer_file,
            "verifier": self.verifier,
            "verifier_module": VERIFIERS[self.verifier].__module__,  # imported by the job: it registers the name
            "config": {f.name: getattr(self.config, f.name) for f in fields(PassAtKConfig)},  # what to sample
            "device": self.device,
            "output_dir": self.output_dir,  # where save_completions writes
        }
        job_path, log_path = layout.background_job_files(copy)
        write_json_atomic(job_path, job)
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.Popen(
            [sys.executable, "-m", "sftrl_callbacks.background", job_path], stdout=log, stderr=log, env=env
        )
        log.close()  # the child holds its own descriptor
        self._running = (step, copy, proc, time.time())

    def _write_problems(self) -> dict[str, str]:
        if self._problem_files is None:
            os.makedirs(self.workdir, exist_ok=True)
            self._problem_files = {}
            for name, ds in self.problems.items():
                path = os.path.join(self.workdir, f"problems_{file_safe(name)}.jsonl")
                ds.to_json(path)
                self._problem_files[name] = path
        return self._problem_files

    @staticmethod
    def _result_path(copy: str, name: str) -> str:
        return layout.checkpoint_passk_path(copy, name)


def hand_over_tokenizer(tokenizer: Any, prompts: list, path: str) -> str:
    """Pickle `tokenizer` to `path` for the background process and return `path`, after checking that the copy
    it will load renders, encodes and decodes `prompts` exactly as `tokenizer` does; a one-line ValueError
    refusing background mode otherwise."""
    from .sampling import encode_prompts

    refusal = "PassAtKCallback(background=True) cannot hand the trainer's tokenizer to its background process"
    try:
        data = pickle.dumps(tokenizer)
        copy = pickle.loads(data)
    except Exception as err:
        kind = type(tokenizer).__name__
        raise ValueError(f"{refusal}: pickling its {kind} failed ({err}); use background=False.") from err
    ids, copied_ids = (encode_prompts(t, prompts) for t in (tokenizer, copy))
    for prompt, a, b in zip(prompts, ids, copied_ids):
        if a != b or tokenizer.decode(a) != copy.decode(b) or tokenizer.eos_token_id != copy.eos_token_id:
            raise ValueError(
                f"{refusal}: its pickled copy tokenizes prompt {prompt!r} differently ({a} vs {b}); use "
                "background=False."
            )
    with atomic_file(path, "wb") as f:
        f.write(data)
    return path


def run_job(job_path: str) -> None:
    """The child process: measure one checkpoint as the job file says."""
    import torch
    from datasets import disable_progress_bars, load_dataset

    from .measure import measure_pass_at_k

    disable_progress_bars()
    with open(job_path, encoding="utf-8") as f:
        job: dict[str, Any] = json.load(f)
    if job["device"] == "cpu":
        torch.set_num_threads(1)  # beside a training run: never oversubscribe its cores
    config = PassAtKConfig(**job["config"])
    importlib.import_module(job["verifier_module"])
    verifier = make_verifier(job["verifier"], answer_column=config.answer_column)
    with open(job["tokenizer"], "rb") as f:
        trainer_tokenizer = pickle.load(f)  # written by this run's own process (hand_over_tokenizer)
    sampler = make_sampler(config.sampler, {"show_progress": False, **config.sampler_options})
    model, tokenizer = sampling_source(sampler, job["checkpoint"], "auto", job["device"], tokenizer=trainer_tokenizer)
    for name, path in job["problems"].items():
        problems = load_dataset("json", data_files=path, split="train")
        result = measure_pass_at_k(model, tokenizer, problems, verifier, config, sampler, name, job["step"])
        if config.save_completions:
            result.write_completions(layout.completions_path(job["output_dir"], job["step"], name))
        result.save(BackgroundPassAtK._result_path(job["checkpoint"], name))


if __name__ == "__main__":
    run_job(sys.argv[1])
