"""Which of the study's data did the held-out leak fix change? Replays every draw with and without `exclude=`,
and says how many distinct prompts each SFT data set holds and which smaller sets repeat a larger one's rows.

Before the fix, `toy.make_splits` kept `exclude=` out of its held-out draw only, so the training rows (SFT data,
RL prompts) were drawn as with no exclusion at all. Runs whose data the fix leaves identical keep their results;
the others are rerun.

    python examples/sft_rl_study/replay_leak.py
"""

from __future__ import annotations

from run_study import ALL_REGIMES, Settings, sft_data, world

from sftrl_callbacks.toy import make_splits


def main() -> None:
    settings = Settings()
    _, _, _, rl_prompts, heldout = world(settings)
    before = make_splits(
        n_train=settings.n_rl_prompts,
        train_steps=settings.heldout_steps,
        n_heldout_sft=0,
        n_heldout_problems=0,
        fmt="problems",
        seed=settings.data_seed + 2,
    ).train
    leaked = sum(p in heldout for p in before["prompt"])
    same = list(before["prompt"]) == list(rl_prompts["prompt"])
    print(f"RL prompts: {'identical' if same else 'CHANGED'} ({leaked} held-out prompts among them before the fix)")
    prompts: dict[tuple[str, int], list[str]] = {}
    for regime in ALL_REGIMES:
        for seed in (0, 1):
            fixed, old = sft_data(regime, seed, heldout).train, sft_data(regime, seed, set()).train
            same = fixed["prompt"] == old["prompt"] and fixed["completion"] == old["completion"]
            leaked = sum(p in heldout for p in old["prompt"])
            prompts[regime, seed] = list(fixed["prompt"])
            print(
                f"SFT data {regime}-s{seed}: {'identical' if same else 'CHANGED'} "
                f"({leaked} held-out prompts among its rows before the fix); {len(fixed)} rows, "
                f"{len(set(fixed['prompt']))} distinct prompts"
            )
    # Same SFT seed, same generator: a smaller set drawn with the same step mix repeats a larger one's first rows.
    for (small, seed), rows in prompts.items():
        larger = [
            f"{big}-s{seed}"
            for (big, other), big_rows in prompts.items()
            if other == seed and len(big_rows) > len(rows) and big_rows[: len(rows)] == rows
        ]
        if larger:
            print(f"{small}-s{seed} is the first {len(rows)} rows of {', '.join(larger)}")


if __name__ == "__main__":
    main()
