#!/usr/bin/env bash
# The whole study: the pilot, the grid (resumes from its results files), the analysis and the fits.
# See REPORT.md for the time it takes; rerun after an interruption and it carries on.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-results}
export WANDB_MODE=disabled
python run_study.py --pilot --rl-seeds 0 1 --out "$out"
python run_study.py --skip-zero-passk --out "$out"
python analyze.py "$out"
signals="pass@1 pass@64 heldout_loss readiness_score step"
sftrl fit "$out/results.jsonl" --target post_rl_pass@1 --signals $signals \
  --json "$out/fit_post_rl.json" --plot "$out/fit_post_rl.png"
sftrl fit "$out/results.jsonl" --target rl_gain --signals $signals \
  --json "$out/fit_rl_gain.json" --plot "$out/fit_rl_gain.png"
