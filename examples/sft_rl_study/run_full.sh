#!/usr/bin/env bash
# The full study: the two-seed GRPO check, then the grid, then the fits. ~45-60 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-results}
mkdir -p "$out"
export WANDB_MODE=disabled
[ -s "$out/rl_check.jsonl" ] || python run_study.py --rl-check --out "$out"
python run_study.py --out "$out"
sftrl fit "$out/results.jsonl" --target post_rl_pass@1 --json "$out/fit_post_rl.json" --plot "$out/fit_post_rl.png" \
  --signals pass@1 pass@64 heldout_loss heldout_loss_min
sftrl fit "$out/results.jsonl" --target rl_gain --json "$out/fit_rl_gain.json" --plot "$out/fit_rl_gain.png" \
  --signals pass@1 pass@64 heldout_loss heldout_loss_min
