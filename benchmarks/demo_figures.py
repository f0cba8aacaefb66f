"""The demo figures of docs/cost.md, measured now by the current code. Prints them; run it, do not import it.

    python benchmarks/demo_figures.py [--write-docs]

Runs `sftrl demo` (same code, default settings) in a temporary folder and prints the paragraph docs/cost.md
shows, with the machine and the date. `--write-docs` replaces the paragraph between the `demo-figures`
markers in docs/cost.md, so the figures there are always ones this script printed.
Run it on a quiet machine: another torch job on the same cores slows the demo many times over.
"""

from __future__ import annotations

import argparse
import tempfile

from docblock import replace_block  # benchmarks/ is on the path of its scripts

from sftrl_callbacks.demo import demo_settings, machine_summary, run_demo


def figures_paragraph() -> str:
    with tempfile.TemporaryDirectory() as out:
        result = run_demo(out, show_progress=False)
    losses = dict(result.heldout_losses)
    first, last = min(losses), max(losses)
    passk = ", ".join(
        f"step {step}: " + " / ".join(f"{curve[k]:.3f}" for k in (1, 8, 64)) for step, curve in result.pass_at_k
    )
    acc = result.greedy_accuracy
    by_steps = ", ".join(f"{k} {v:.0%}" for k, v in acc.items() if k != "all")
    share = result.callback_time_s / result.train_time_s
    each = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.callback_times.items())
    rl = result.rl_start
    return (
        f"`sftrl demo` (400 steps, batch 32, 20k mixed 1-3-step rows; {demo_settings()}; "
        f"`RLReadinessCallback`), measured by "
        f"`python benchmarks/demo_figures.py` on {machine_summary()}: wall time {result.wall_time_s:.0f} s "
        f"(training {result.train_time_s:.0f} s, of which the callbacks {result.callback_time_s:.1f} s = "
        f"{share:.1%}: {each}); greedy exact-match accuracy on 96 held-out problems **{acc['all']:.0%}** ({by_steps}); "
        f"held-out loss {losses[first]:.3f} at step {first} -> {losses[last]:.3f} at step {last}; "
        f"pass@1 / pass@8 / pass@64 at {passk}; RL start: step {rl['step'] if rl else None}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-docs", action="store_true", help="replace the figures paragraph in docs/cost.md")
    ns = parser.parse_args()
    paragraph = figures_paragraph()
    print(paragraph)
    if ns.write_docs:
        print(f"written to {replace_block('cost.md', 'demo-figures', paragraph)}")


if __name__ == "__main__":
    main()
