"""`RewardFunctionVerifier`: any TRL reward function as a verifier that returns scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class RewardFunctionVerifier:
    """Turns a TRL reward function into a verifier. Its rewards are scores: pass@k counts a completion at or above
    `PassAtKConfig.score_threshold` (default 1.0) as correct, and the mean reward is logged as `mean_score`. A None
    reward (TRL's "does not apply") scores 0.

    The function is called as TRL's GRPOTrainer calls it: `reward_func(prompts=, completions=,
    completion_ids=None, **columns)` where every other column of the problem rows arrives as a keyword
    list, and a completion is `[{"role": "assistant", "content": text}]` when its prompt is a
    conversation (plain text otherwise), so TRL's own reward functions (e.g. `accuracy_reward`) work.
    Like GRPOTrainer, it gives the whole completion, thinking included; `answer_region=True` gives the answer
    region instead (the text after the thinking, as the other verifiers grade).
    """

    returns_scores = True

    def __init__(
        self,
        reward_func: Callable[..., list[float | None]],
        prompt_column: str = "prompt",
        answer_region: bool = False,
    ) -> None:
        if not callable(reward_func):
            raise TypeError("reward_func must be callable.")
        self.reward_func, self.prompt_column = reward_func, prompt_column
        self.reads_answer_region = answer_region

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
        columns = {k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k != self.prompt_column}
        prompts = [r[self.prompt_column] for r in rows]
        completions = [
            [{"role": "assistant", "content": c}] if isinstance(p, list) else c for c, p in zip(completions, prompts)
        ]
        rewards = self.reward_func(
            prompts=prompts,
            completions=completions,
            completion_ids=None,
            **columns,
        )
        if len(rewards) != len(completions):
            raise ValueError(f"reward_func returned {len(rewards)} rewards for {len(completions)} completions.")
        return [0.0 if r is None else r for r in rewards]
