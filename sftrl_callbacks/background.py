"""Pass@k of saved checkpoints in a separate process, so training does not wait for sampling.

`PassAtKCallback(background=True)` hands each saved checkpoint to a `BackgroundPassAtK`: the checkpoint
is hard-linked into `<output_dir>/sftrl/background/` (so `save_total_limit` rotation cannot delete it
under the job), and a worker process (`python -m sftrl_callbacks.background worker.json`, started at train
start) measures it with `measure_pass_at_k`, the same code and config as in training, on
`background_device`. Jobs run one at a time, in order; the callback collects finished ones at every step and
at the end of training, and publishes them at the checkpoint's own step.

The worker samples with the trainer's own tokenizer, pickled at train start, not the checkpoint's: a tokenizer
built in code can load back from a checkpoint as another one (`AutoTokenizer` may pick the model type's own
class, which tokenizes differently), and the numbers would then be silently wrong.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from datasets import Dataset

from . import layout
from .checkpoints import link_copy, sampling_source
from .contracts import PassAtKConfig, PassAtKResult, load_result, make_sampler, sampler_factory
from .io import atomic_file, write_json_atomic
from .records import file_safe
from .verifiers import VERIFIERS, make_verifier

logger = logging.getLogger("sftrl_callbacks")


class BackgroundPassAtK:
    """A queue of checkpoints measured one at a time by a worker process (`PassAtKCallback.background_jobs` with
    background=True; without it the callback measures saved checkpoints itself).

    The worker starts with the queue, so its imports overlap training, and it keeps what does not change from one
    checkpoint to the next: the problems, the verifier, the tokenizer and the sampler (a vLLM engine loads the
    next checkpoint in place). A job that fails ends the worker, and the next job gets a fresh one."""

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
        self._queue: list[tuple[int, str, bool]] = []  # (step, linked checkpoint copy, training over)
        self._running: tuple[int, str, float, int] | None = None  # (step, copy, start time, log offset)
        prompts = [prompt for ds in self.problems.values() for prompt in config.used_prompts(ds)]
        self._tokenizer_file = hand_over_tokenizer(tokenizer, prompts, os.path.join(self.workdir, "tokenizer.pkl"))
        self._log_path = os.path.join(self.workdir, "worker.log")
        self._spec_path = self._write_spec()
        self._worker: subprocess.Popen | None = None
        self._start_worker()

    def submit(self, step: int, checkpoint: str, training_over: bool = False) -> None:
        """Queue `checkpoint`; it may be the copy a stopped run left here (then it is measured as it is). On the CPU a
        job runs on one thread beside training, or on all of them when `training_over`."""
        copy = self.copy_path(step)
        if os.path.abspath(checkpoint) != os.path.abspath(copy):
            shutil.rmtree(copy, ignore_errors=True)  # left by an interrupted earlier run
            link_copy(checkpoint, copy)
        with contextlib.suppress(FileNotFoundError):  # a stopped run's copy is measured again, not taken as done
            os.remove(layout.background_done_path(copy))
        self._queue.append((step, copy, training_over))
        self._start_next()

    def copy_path(self, step: int) -> str:
        return os.path.join(self.workdir, f"checkpoint-{step}")

    @property
    def pending(self) -> int:
        return len(self._queue) + (self._running is not None)

    @property
    def pending_steps(self) -> list[int]:
        """Steps submitted and not yet collected, in order."""
        return ([self._running[0]] if self._running else []) + [step for step, *_ in self._queue]

    def collect(self) -> list[tuple[int, dict[str, PassAtKResult] | str]]:
        """Finished jobs since the last call: (step, {set: result}) or (step, error text)."""
        if self._running is None:
            return []
        step, copy, started, log_offset = self._running
        out: dict[str, PassAtKResult] | str
        bound = self.config.measurement_timeout_s
        if os.path.exists(layout.background_done_path(copy)):
            out = {name: load_result(layout.checkpoint_passk_path(copy, name)) for name in self.problems}
        elif self._worker is not None and self._worker.poll() is None:
            if bound is None or time.time() - started <= bound:
                return []
            self._kill_worker()
            out = (
                f"background pass@k of step {step} ran past its {bound:g} s bound (measurement_timeout_s): its "
                "process was killed, and the next job starts a new one"
            )
        else:
            code = self._worker.returncode if self._worker is not None else None
            self._worker = None
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                f.seek(log_offset)
                tail = f.read()[-2000:]
            seconds = time.time() - started
            out = f"background pass@k of step {step} exited with {code} after {seconds:.0f} s:\n{tail}"
        self._running = None
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

    def _kill_worker(self) -> None:
        worker, self._worker = self._worker, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)  # its own session: an engine's helper processes go with it
        worker.wait()

    def close(self) -> None:
        """End the worker (it finishes the job it is on first); a later submit starts another."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(OSError):
            worker.stdin.close()  # end of input: the worker exits after its job
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    # -- internals ----------------------------------------------------------------------------------
    def _write_spec(self) -> str:
        """What every job of this queue shares, for the worker to load once."""
        os.makedirs(self.workdir, exist_ok=True)
        problem_files = {}
        for name, ds in self.problems.items():
            problem_files[name] = os.path.join(self.workdir, f"problems_{file_safe(name)}.jsonl")
            ds.to_json(problem_files[name])
        spec = {
            "problems": problem_files,
            "tokenizer": self._tokenizer_file,
            "verifier": self.verifier,
            "verifier_module": VERIFIERS[self.verifier].__module__,  # imported by the worker: it registers the name
            "sampler_module": sampler_factory(self.config.sampler).__module__,
            "config": {f.name: getattr(self.config, f.name) for f in fields(PassAtKConfig)},  # what to sample
            "device": self.device,
            "output_dir": self.output_dir,  # where save_completions writes
        }
        path = os.path.join(self.workdir, "worker.json")
        write_json_atomic(path, spec)
        return path

    def _start_worker(self) -> None:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        with open(self._log_path, "a", encoding="utf-8") as log:  # the worker holds its own descriptor
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "sftrl_callbacks.background", self._spec_path],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=env,
                text=True,
                start_new_session=True,
            )

    def _start_next(self) -> None:
        if self._running is not None or not self._queue:
            return
        step, copy, training_over = self._queue.pop(0)
        if self._worker is None or self._worker.poll() is not None:
            self._start_worker()
        log_offset = os.path.getsize(self._log_path)
        self._running = (step, copy, time.time(), log_offset)
        with contextlib.suppress(BrokenPipeError):  # a worker that died is reported by collect, with its log
            job = {"checkpoint": copy, "step": step, "training_over": training_over}
            self._worker.stdin.write(json.dumps(job) + "\n")
            self._worker.stdin.flush()


def hand_over_tokenizer(tokenizer: Any, prompts: list, path: str) -> str:
    """Pickle `tokenizer` to `path` for the background process and return `path`, after checking that the copy
    it will load renders, encodes and decodes `prompts` exactly as `tokenizer` does; a one-line ValueError
    refusing background mode otherwise."""
    from .prompts import encode_prompts

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


def serve(spec_path: str) -> None:
    """The worker process: load what every job shares, then measure each checkpoint named on stdin, one JSON
    object a line, until end of input. An exception ends the process (the callback reports it with this log)."""
    import torch
    from datasets import disable_progress_bars, load_dataset

    from .measure import measure_pass_at_k

    disable_progress_bars()
    with open(spec_path, encoding="utf-8") as f:
        spec: dict[str, Any] = json.load(f)
    all_threads = torch.get_num_threads()
    # The modules that register the verifier and the sampler by name, before a config or factory names them.
    importlib.import_module(spec["verifier_module"])
    importlib.import_module(spec["sampler_module"])
    config = PassAtKConfig(**spec["config"])
    verifier = make_verifier(spec["verifier"], config.verifier_options, config.answer_column)
    with open(spec["tokenizer"], "rb") as f:
        trainer_tokenizer = pickle.load(f)  # written by this run's own process (hand_over_tokenizer)
    sampler = make_sampler(config.sampler, config.sampler_options, {"show_progress": False})  # a log, no terminal
    problems = {name: load_dataset("json", data_files=path, split="train") for name, path in spec["problems"].items()}
    for line in sys.stdin:
        job = json.loads(line)
        if spec["device"] == "cpu":  # beside a training run, never oversubscribe its cores; after it, use them
            torch.set_num_threads(all_threads if job["training_over"] else 1)
        started = time.perf_counter()
        model, tokenizer = sampling_source(
            sampler, job["checkpoint"], "auto", spec["device"], tokenizer=trainer_tokenizer
        )
        for name, rows in problems.items():
            result = measure_pass_at_k(model, tokenizer, rows, verifier, config, sampler, name, job["step"])
            if config.save_completions:
                result.write_completions(layout.completions_path(spec["output_dir"], job["step"], name))
            result.save(layout.checkpoint_passk_path(job["checkpoint"], name))
        del model
        gc.collect()  # the next checkpoint's weights take this one's place
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        seconds = time.perf_counter() - started
        write_json_atomic(layout.background_done_path(job["checkpoint"]), {"step": job["step"], "seconds": seconds})
        threads = torch.get_num_threads()
        print(
            f"step {job['step']}: measured in {seconds:.1f} s on {threads} thread(s) by worker {os.getpid()}",
            flush=True,
        )


if __name__ == "__main__":
    serve(sys.argv[1])
