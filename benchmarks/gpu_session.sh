#!/usr/bin/env bash
# The GPU numbers issue #9 asks for, in one run on the GPU machine (see ../shared/GPU.md), from the repo root:
#   bash benchmarks/gpu_session.sh
# That machine lacks trl and datasets: carry their wheels in .whl/ (GPU.md gives the `pip download` line).
# Prints the sampler table (403M bf16 Llama, <= 256 new tokens; the naive loop is skipped: ~1k tok/s there)
# and the callbacks' share of SFT for ../shared/gpu/gpu_check.py part A's setting; then, where vLLM installs
# (`pip install vllm`, or its wheel carried in .whl/), the same table with VLLMSampler rows against compiled
# static-cache generate and HFSampler. Not yet run on a GPU.
set -euo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/bench_sampler.py --model 403m --device cuda --max-new-tokens 256 --compile --skip naive --repeats 2
python3 benchmarks/monitor_share.py --model 33m --device cuda
if python3 -c "import vllm" 2>/dev/null || python3 -m pip install -q vllm; then
  python3 benchmarks/bench_sampler.py --model 403m --device cuda --max-new-tokens 256 --compile --skip naive \
    --repeats 2 --sampler hf vllm
else
  echo "vLLM did not install: no VLLMSampler rows"
fi
