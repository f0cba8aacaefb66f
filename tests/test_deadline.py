"""A measurement has a wall-clock bound enforced from outside it: a sampler that never returns is interrupted (in
the training process) or killed (a background job), the measurement is recorded as failed, the sampler is reset,
and training goes on. The vLLM engine's own case is in test_vllm.py."""

import os
import threading
import time

import pytest

from sftrl_callbacks import PassAtKCallback
from sftrl_callbacks.contracts import SamplerHooks, register_sampler
from sftrl_callbacks.deadline import MeasurementTimeout, run_with_deadline
from sftrl_callbacks.hf_sampler import HFSampler
from sftrl_callbacks.io import read_jsonl

from .conftest import make_trainer


def test_the_bound_interrupts_code_that_catches_every_exception():
    def spins():
        while True:
            try:
                while True:
                    pass
            except Exception:  # an engine's own error handling must not swallow the interrupt
                pass

    start = time.time()
    with pytest.raises(MeasurementTimeout, match="still running after its 0.3 s bound"):
        run_with_deadline(spins, 0.3)
    assert time.time() - start < 2
    assert run_with_deadline(lambda x: x + 1, 0.3, 1) == 2
    assert not [t for t in threading.enumerate() if t.name == "sftrl-deadline"]  # the watchdogs are gone


def test_a_bound_reached_as_the_call_returns_never_lands_in_the_caller():
    for _ in range(300):
        try:
            run_with_deadline(sum, 0.0005, range(3000))
        except MeasurementTimeout:
            pass
    time.sleep(0.05)  # an interrupt still pending would land in this frame


class HangsOnce(SamplerHooks):
    """HFSampler, except that the call after `hang_flag` appears spins forever (once: it removes the flag)."""

    description = "HangsOnce (test engine)"

    def __init__(self, hang_flag: str) -> None:
        self.inner, self.flag, self.resets = HFSampler(), hang_flag, []

    def sample(self, model, tokenizer, prompts, n, params):
        if os.path.exists(self.flag):
            os.remove(self.flag)
            while True:
                pass
        return self.inner.sample(model, tokenizer, prompts, n, params)

    def reset(self, reason: str) -> None:
        self.resets.append(reason)


register_sampler("hangs-once", HangsOnce)


def _failures(tmp_path):
    records = read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")
    return [r for r in records if r["name"] == "sftrl/failure/passk"]


def test_a_hung_sampler_is_interrupted_at_the_bound_and_training_goes_on(tmp_path, tokenizer, splits):
    flag = tmp_path / "hang"
    settings = dict(n=2, max_new_tokens=8, measure_at_start=False, every_n_steps=2, measurement_timeout_s=2)
    passk = PassAtKCallback(
        {"p": splits.heldout_problems.select(range(2))},
        sampler="hangs-once",
        sampler_options={"hang_flag": str(flag)},
        **settings,
    )
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=6, save_strategy="no")
    flag.touch()
    start = time.time()
    trainer.train()
    assert time.time() - start < 60
    assert trainer.state.global_step == 6 and passk.errors == 1
    assert [r.step for r in passk.results["p"]] == [4, 6]  # the step-2 measurement failed; the next ones ran
    assert passk.sampler.resets == ["the measurement ran past its 2 s bound"]
    (event,) = _failures(tmp_path)
    assert event["step"] == 2 and event["sampler"] == "HangsOnce (test engine)"
    assert event["error"] == "MeasurementTimeout: still running after its 2 s bound (measurement_timeout_s)"


@pytest.mark.slow
def test_a_hung_background_job_is_killed_at_the_bound(tmp_path, tokenizer, splits):
    flag = tmp_path / "hang"
    passk = PassAtKCallback(
        {"p": splits.heldout_problems.select(range(2))},
        verifier="answer",
        sampler="hangs-once",
        sampler_options={"hang_flag": str(flag)},
        background=True,
        n=2,
        max_new_tokens=8,
        measure_at_start=False,
        on_train_end=False,
        measurement_timeout_s=20,
    )
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=6, save_steps=3)
    flag.touch()
    start = time.time()
    trainer.train()
    assert time.time() - start < 120
    assert passk.errors == 1 and [r.step for r in passk.results["p"]] == [6]
    (event,) = _failures(tmp_path)
    assert (
        "background pass@k of step 3 ran past its 20 s bound (measurement_timeout_s): its process was killed"
        in (event["error"])
    )
