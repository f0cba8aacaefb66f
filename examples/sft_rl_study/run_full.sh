#!/usr/bin/env bash
# The whole study's design: the pilot, the grid, the early-stopping pilot, the analyses and the fits.
# Every step resumes from its results files: rerun after an interruption and it carries on. The data in
# results/ and turn_pilot/ were assembled from partial runs and reruns of these steps (REPORT.md, section 1),
# not from one run of this script: a run from scratch reproduces the design, not those numbers to the digit.
# See REPORT.md for the time each step takes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-results}
turn=${2:-turn_pilot}
export WANDB_MODE=disabled
python run_study.py --pilot --rl-seeds 0 1 --out "$out"
python run_study.py --skip-zero-passk --out "$out"
# The early-stopping pilot: six SFT runs, then RL from the checkpoints the selection rules pick, as run for
# REPORT.md (mixed-300-s1 got no RL: its loss turned where pass@64 was 0.095). `--turn-pilot` alone runs it all.
python run_study.py --turn-pilot --sft-only --out "$turn"
python run_study.py --turn-pilot --regimes mixed-600 mixed-1200 --out "$turn"
python run_study.py --turn-pilot --regimes mixed-300 --sft-seeds 0 --out "$turn"
python analyze.py "$out"
python analyze.py "$turn"
signals="pass@1 pass@64 heldout_loss readiness_score step"
sftrl fit "$out/results.jsonl" --target post_rl_pass@1 --signals $signals \
  --json "$out/fit_post_rl.json" --plot "$out/fit_post_rl.png"
sftrl fit "$out/results.jsonl" --target rl_gain --signals $signals \
  --json "$out/fit_rl_gain.json" --plot "$out/fit_rl_gain.png"
