"""Figures and the markdown table for REPORT.md from the study's results (no torch).

python examples/sft_rl_study/analyze.py [results_dir]
"""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sftrl_callbacks.predict import read_table  # noqa: E402


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    rows = read_table(os.path.join(out, "results.jsonl"))
    checks = (
        read_table(os.path.join(out, "rl_check.jsonl")) if os.path.exists(os.path.join(out, "rl_check.jsonl")) else []
    )
    k = max(int(c.split("@")[1]) for c in rows[0] if c.startswith("pass@") and c[5:].isdigit())

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for c in checks:
        steps, rewards = zip(*c["rewards"])
        axes[0].plot(steps, rewards, label=f"rl-check seed {c['rl_seed']}")
    for r in rows:
        if r["rl_rewards"]:
            steps, rewards = zip(*r["rl_rewards"])
            axes[0].plot(steps, rewards, color="grey", alpha=0.3, lw=1)
    axes[0].set(title="GRPO reward (strict step verifier) vs step", xlabel="GRPO step", ylabel="mean reward")
    axes[0].legend(fontsize=8)
    for ax, signal in zip(axes[1:], ["pass@1", f"pass@{k}", "heldout_loss"]):
        for r in rows:
            color = "tab:orange" if r["mix_1_2_3_step"].endswith("/0") else "tab:blue"
            ax.scatter(r[signal], r["post_rl_pass@1"], color=color, s=22)
            ax.annotate(r["name"], (r[signal], r["post_rl_pass@1"]), fontsize=6)
        ax.set(xlabel=f"post-SFT {signal}", ylabel="post-RL pass@1", title=f"{signal} vs post-RL (orange: short-only)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "study.png"), dpi=90)

    head = (
        f"| variant | rows | epochs | lr | 1/2/3-step mix | SFT pass@1 | SFT pass@{k} | held-out loss (min) "
        "| post-RL pass@1 | RL gain |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(
            f"| {r['name']} | {r['unique_rows']} | {r['epochs']} | {r['learning_rate']:g} | {r['mix_1_2_3_step']} | "
            f"{r['pass@1']:.3f} | {r[f'pass@{k}']:.3f} | {r['heldout_loss']:.3f} ({r['heldout_loss_min']:.3f}) | "
            f"{r['post_rl_pass@1']:.3f} | {r['rl_gain']:+.3f} |"
        )
    for c in checks:
        print(
            f"rl-check seed {c['rl_seed']}: {json.dumps(c['post_sft'])} -> {json.dumps(c['post_rl'])} "
            f"({c['post_sft_pass@1']:.3f} -> {c['post_rl_pass@1']:.3f}, {c['seconds']} s)"
        )
    print(f"total SFT {sum(r['sft_seconds'] for r in rows):.0f} s, RL {sum(r['rl_seconds'] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
