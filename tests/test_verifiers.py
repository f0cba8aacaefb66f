import time

import pytest

from sftrl_callbacks import AnswerVerifier, MathVerifyVerifier, RewardFunctionVerifier
from sftrl_callbacks.toy import StepVerifier, make_splits
from sftrl_callbacks.verifiers import IsolatedPool, make_verifier


def _sleep_forever(x):
    time.sleep(60)
    return x


def _allocate(mb):
    return len(bytearray(mb * 2**20)) // 2**20


def _echo(x):
    return x


def test_answer_verifier():
    v = AnswerVerifier()
    rows = [{"answer": "12"}] * 6
    completions = [" 4+8=12 #### 12", " #### 13", "no marker 12", " #### 12.0", "#### 1 #### 12", "####"]
    assert v.check(completions, rows) == [True, False, False, True, True, False]
    with pytest.raises(ValueError, match="capture group"):
        AnswerVerifier(pattern="####")


def test_isolated_pool_survives_hangs_and_memory_bombs():
    pool = IsolatedPool(_sleep_forever, workers=1, timeout_s=0.5)
    t = time.time()
    assert pool.map([(1,), (2,)]) == [None, None]
    assert time.time() - t < 5 and pool.replaced == 2
    pool.close()
    pool = IsolatedPool(_allocate, workers=2, timeout_s=5, memory_mb=256)
    assert pool.map([(10,), (4096,), (20,)]) == [10, None, 20]
    pool.close()
    pool = IsolatedPool(_echo, workers=2, timeout_s=5)
    assert pool.map([(i,) for i in range(50)]) == list(range(50))
    pool.close()


def test_math_verify_verifier_correct_wrong_malformed_and_bombs():
    v = MathVerifyVerifier(workers=2, timeout_s=3, memory_mb=512)
    completions = [
        "so the answer is \\boxed{\\frac{1}{2}}",
        "the answer is \\boxed{3}",
        "\\boxed{\\frac{",  # malformed
        "\\boxed{9^{9^{9^{9^{9}}}}}",  # sympy would try to evaluate this
        "#### 7",
    ]
    rows = [{"answer": "1/2"}, {"answer": "2"}, {"answer": "1"}, {"answer": "5"}, {"answer": "7"}]
    t = time.time()
    assert v.check(completions, rows) == [True, False, False, False, True]
    assert time.time() - t < 15
    v.close()


def test_reward_function_adapter_passes_columns_like_trl():
    seen = {}

    def reward(prompts, completions, completion_ids=None, answer=None, **kwargs):
        seen.update(kwargs, prompts=prompts)
        return [1.0 if c.endswith(a) else 0.0 for c, a in zip(completions, answer)] + [None] * 0

    v = RewardFunctionVerifier(reward)
    rows = [{"prompt": "Q", "answer": "3", "steps": 1}, {"prompt": "R", "answer": "4", "steps": 2}]
    assert v.check(["#### 3", "#### 5"], rows) == [1.0, 0.0]
    assert seen["steps"] == [1, 2] and seen["prompts"] == ["Q", "R"]
    assert RewardFunctionVerifier(lambda **kw: [None, 0.5]).check(["a", "b"], rows) == [0.0, 0.5]


def test_make_verifier():
    assert isinstance(make_verifier("answer"), AnswerVerifier)
    assert isinstance(make_verifier("toy-steps"), StepVerifier)
    with pytest.raises(ValueError, match="Unknown verifier"):
        make_verifier("regexx")
    with pytest.raises(TypeError, match="not a Verifier"):
        make_verifier(42)
    problems = make_splits(n_train=1, n_heldout_sft=1, n_heldout_problems=3).heldout_problems
    rows = [problems[i] for i in range(3)]
    from sftrl_callbacks.toy import problem_from_row

    good = [problem_from_row(r).completion for r in rows]
    assert StepVerifier().check(good, rows) == [True] * 3


def test_trl_accuracy_reward_works_on_conversational_problems():
    """TRL's own reward function gets completions in TRL's conversational format when the prompt is a chat."""
    from trl.rewards import accuracy_reward

    verifier = RewardFunctionVerifier(accuracy_reward)
    rows = [{"prompt": [{"role": "user", "content": "2+2?"}], "solution": "$4$"}] * 2
    assert verifier.check(["The answer is $4$.", "The answer is $5$."], rows) == [1.0, 0.0]
