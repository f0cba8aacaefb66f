"""Does the flag pick the right checkpoint? An SFT -> RL early-stopping study on the toy world.

Candidates are the checkpoints saved *along* SFT runs (the early-stopping decision) from a few data
regimes, including over-training. For each SFT run (regime x SFT seed):
  1. SFT of the tiny Llama with the library's HeldOutLossCallback, PassAtKCallback (pass@1/8/64 at
     every save) and RLReadinessCallback (its rl_start.json is the checkpoint the library picks);
then for every saved checkpoint and every RL seed:
  2. GRPO (TRL GRPOTrainer, strict step-verified reward) from that checkpoint, same budget for all;
  3. post-RL pass@1 on the held-out problems, with its standard error.

Results are appended to `<out>/sft.jsonl` (one line per SFT run, its checkpoints inside) and
`<out>/rl.jsonl` (one line per checkpoint x RL seed). A rerun skips what these files already hold, so
an interrupted grid resumes where it stopped. Jobs run in `--workers` processes with `--threads`
torch threads each (2 x 1 on a 2-core CPU; a GPU machine with 16 cores can run many side by side).

    python examples/sft_rl_study/run_study.py --pilot     # one regime, 2 SFT seeds, RL from its last 2 checkpoints
    python examples/sft_rl_study/run_study.py             # the grid (includes the pilot's jobs)
    python examples/sft_rl_study/analyze.py               # tables, plots, the `sftrl fit` table
    python examples/sft_rl_study/run_study.py --quick --out /tmp/q   # the pipeline in ~1 min (a CI test)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))

# The world: 1-digit operands, 1-5 step problems. Held-out rows (loss) and problems (sampling) are 4- and
# 5-step, where a ~1M model stays far from perfect, so pass@64 is not saturated (the first study's 2-3-step
# held-out set sat at pass@64 0.97-0.99 for every good candidate; a 3-4-step pilot still reached 0.95-0.98).
# Regimes: name -> (unique SFT rows, weights of 1/2/3/4/5-step problems). Every run takes the same
# number of SFT steps, so fewer rows means more epochs; checkpoints are saved along the way.
MIXED, SHORT = (1, 1, 1, 1, 1), (1, 1, 1, 1, 0)
REGIMES = {
    "mixed-19k": (19_200, MIXED),  # 1 epoch
    "mixed-2.4k": (2_400, MIXED),  # 8 epochs: more epochs on less data
    "mixed-300": (300, MIXED),  # 64 epochs: over-training
    "mixed-100": (100, MIXED),  # 192 epochs: over-training until the held-out loss turns within the run
    "short-19k": (19_200, SHORT),  # no 5-step examples: short-only data
}
PILOT_REGIME = "mixed-19k"
# The early-stopping pilot (--turn-pilot): fewer rows and more steps, so the held-out loss turns within the
# run while pass@k is not yet near zero; saves every 100 steps around the turn. RL goes to the checkpoints the
# per-run selection rules of analyze.py pick (the library's pick, the last, the lowest held-out loss, ...).
TURN_REGIMES = {"mixed-300": (300, MIXED), "mixed-600": (600, MIXED), "mixed-1200": (1_200, MIXED)}
TURN_SETTINGS = {"sft_steps": 1200, "save_every": 100}
ALL_REGIMES = {**REGIMES, **TURN_REGIMES}


@dataclass(frozen=True)
class Settings:
    """Everything that decides a result; rows made under other settings are not resumed from."""

    sft_steps: int = 600
    save_every: int = 200
    learning_rate: float = 2e-3
    batch_size: int = 32
    n_heldout_sft: int = 256
    n_heldout_problems: int = 200
    n_rl_prompts: int = 4000
    passk_n: int = 64
    rl_steps: int = 200
    rl_learning_rate: float = 5e-5
    rl_prompts_per_step: int = 8
    rl_generations: int = 16
    post_rl_n: int = 32
    max_new_tokens: int = 80
    heldout_steps: tuple[int, ...] = (4, 5)  # held-out rows and problems, and the RL prompts
    data_seed: int = 0

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            sft_steps=12,
            save_every=6,
            n_heldout_sft=16,
            n_heldout_problems=8,
            n_rl_prompts=32,
            passk_n=8,
            rl_steps=2,
            rl_prompts_per_step=2,
            rl_generations=4,
            post_rl_n=4,
        )

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# -- the shared data ----------------------------------------------------------------------------
def world(settings: Settings):
    """(tokenizer, held-out SFT rows, held-out problems, RL prompts): fixed by data_seed, disjoint by prompt."""
    from sftrl_callbacks.toy import build_tokenizer, make_splits

    base = make_splits(
        n_train=0,
        n_heldout_sft=settings.n_heldout_sft,
        n_heldout_problems=settings.n_heldout_problems,
        heldout_steps=settings.heldout_steps,
        seed=settings.data_seed,
    )
    heldout = set(base.heldout_sft["prompt"]) | set(base.heldout_problems["prompt"])
    rl = make_splits(
        n_train=settings.n_rl_prompts,
        train_steps=settings.heldout_steps,
        n_heldout_sft=0,
        n_heldout_problems=0,
        fmt="problems",
        seed=settings.data_seed + 2,
        exclude=heldout,
    )
    return build_tokenizer(), base.heldout_sft, base.heldout_problems, rl.train, heldout


def by_steps(c: list[int], n: list[int], steps: list[int]) -> dict[str, float]:
    """Sampled pass@1 (mean of c/n) per problem step count."""
    out = {}
    for k in sorted(set(steps)):
        idx = [i for i, s in enumerate(steps[: len(c)]) if s == k]
        out[f"{k}-step"] = sum(c[i] / n[i] for i in idx) / len(idx)
    return out


def standard_error(c: list[int], n: list[int]) -> float:
    """SE of the mean of per-problem c/n over a fixed problem set (sampling noise only).

    Each problem's c/n is a mean of n Bernoulli draws: variance p(1-p)/n, estimated without bias by
    p_hat(1-p_hat)/(n-1); the mean over P problems has variance sum / P^2.
    """
    var = sum((ci / ni) * (1 - ci / ni) / max(ni - 1, 1) for ci, ni in zip(c, n))
    return math.sqrt(var) / len(c)


# -- jobs (run in worker processes) ---------------------------------------------------------------
def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("WANDB_MODE", "disabled")


def sft_data(regime: str, sft_seed: int, heldout: set[str]):
    """The SFT rows of one run: the regime's size and step mix, drawn by the SFT seed, held-out prompts left out."""
    from sftrl_callbacks.toy import make_splits

    rows, weights = ALL_REGIMES[regime]
    return make_splits(
        n_train=rows,
        train_steps=tuple(range(1, len(weights) + 1)),
        train_weights=weights,
        n_heldout_sft=0,
        n_heldout_problems=0,
        seed=1000 + sft_seed,  # the SFT seed draws the data too
        exclude=heldout,
    )


def sft_job(regime: str, sft_seed: int, settings: Settings, run_dir: str, device: str) -> dict:
    """One SFT run with the three callbacks; its saved checkpoints are the candidates."""
    from trl import SFTTrainer

    from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
    from sftrl_callbacks.demo import toy_sft_config
    from sftrl_callbacks.toy import StepVerifier, build_model

    t0 = time.time()
    tokenizer, heldout_sft, problems, _, heldout = world(settings)
    rows, weights = ALL_REGIMES[regime]
    data = sft_data(regime, sft_seed, heldout)
    model = build_model(tokenizer, seed=sft_seed)
    loss_cb = HeldOutLossCallback({"heldout": heldout_sft}, every_n_steps=max(1, settings.save_every // 3))
    passk_cb = PassAtKCallback(
        {"problems": problems},
        measure_at_start=False,  # the candidates are checkpoints; the untrained model's pass@k is 0
        verifier=StepVerifier(),
        n=settings.passk_n,
        ks=sorted({1, 8, settings.passk_n}),
        max_new_tokens=settings.max_new_tokens,
        seed=settings.data_seed,
    )
    readiness_cb = RLReadinessCallback()
    shutil.rmtree(run_dir, ignore_errors=True)
    args = toy_sft_config(
        run_dir,
        settings.sft_steps,
        [],
        seed=sft_seed,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        save_steps=settings.save_every,
        save_only_model=True,
        logging_steps=max(1, settings.save_every // 3),
        use_cpu=device == "cpu",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        callbacks=[loss_cb, passk_cb, readiness_cb],
    )
    trainer.train()
    with open(os.path.join(run_dir, "sftrl", "rl_start.json"), encoding="utf-8") as f:
        rl_start = json.load(f)
    scores = {r["step"]: r["score"] for r in rl_start["ranking"]}
    losses = dict(loss_cb.history["sftrl/heldout/heldout/loss"])
    train_loss = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    saved = sorted(int(d.split("-")[1]) for d in os.listdir(run_dir) if d.startswith("checkpoint-"))
    results = {r.step: r for r in passk_cb.results["problems"]}
    checkpoints = []
    for step in saved:
        r = results[step]
        checkpoints.append(
            {
                "id": f"{regime}-s{sft_seed}@{step}",
                "step": step,
                "epochs": round(step * settings.batch_size / rows, 2),
                "path": os.path.join(os.path.basename(run_dir), f"checkpoint-{step}"),  # under <out>/runs
                **{f"pass@{k}": v for k, v in r.pass_at_k.items()},
                "pass@1_by_steps": by_steps(r.c_per_problem, r.n_per_problem, problems["steps"]),
                "heldout_loss": losses[step],
                "readiness_score": scores.get(step),
                "rl_start": step == rl_start["step"],
                "last": step == saved[-1],
            }
        )
    return {
        "regime": regime,
        "sft_seed": sft_seed,
        "rows": rows,  # drawn independently, not kept unique: prompts repeat
        "distinct_prompts": len(set(data.train["prompt"])),
        "step_mix": "/".join(map(str, weights)),  # weights of 1-, 2-, ... step rows
        "rl_start_step": rl_start["step"],
        "flags": [f["kind"] + f"@{f['confirmed_step']}" for f in rl_start["flags"]],
        "heldout_loss_history": sorted(losses.items()),
        "train_loss_history": train_loss,
        "checkpoints": checkpoints,
        "seconds": round(time.time() - t0, 1),
        "settings": settings.key(),
    }


def decision_candidates(checkpoints: list[dict], k: int) -> list[dict]:
    """The checkpoints of one SFT run that some selection rule of analyze.py picks: the ones RL must score for
    the early-stopping comparison (the library's pick against the last checkpoint, the loss minimum, ...)."""
    from analyze import rules

    picked = {pick(checkpoints)["step"] for pick in rules(k).values()}
    return [c for c in checkpoints if c["step"] in picked]


def rl_job(candidate: dict, rl_seed: int, settings: Settings, work_dir: str, device: str) -> dict:
    """GRPO from one checkpoint, then post-RL pass@1 on the held-out problems."""
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
    from sftrl_callbacks.toy import StepVerifier

    t0 = time.time()
    tokenizer, _, problems, rl_prompts, _ = world(settings)
    model = AutoModelForCausalLM.from_pretrained(candidate["path"])
    out_dir = os.path.join(work_dir, f"grpo-{candidate['id'].replace('@', '-')}-r{rl_seed}")
    args = GRPOConfig(
        output_dir=out_dir,
        max_steps=settings.rl_steps,
        per_device_train_batch_size=settings.rl_prompts_per_step * settings.rl_generations,
        num_generations=settings.rl_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=1.0,
        top_k=0,
        learning_rate=settings.rl_learning_rate,
        lr_scheduler_type="constant",
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=device == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=rl_seed,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=step_reward, args=args, train_dataset=rl_prompts, processing_class=tokenizer
    )
    trainer.train()
    rl_s = time.time() - t0
    rewards = [(h["step"], h["reward"]) for h in trainer.state.log_history if "reward" in h]
    shutil.rmtree(out_dir, ignore_errors=True)
    config = PassAtKConfig(
        n=settings.post_rl_n, ks=[1], max_new_tokens=settings.max_new_tokens, seed=settings.data_seed + 100
    )
    post = measure_pass_at_k(model, tokenizer, problems, StepVerifier(), config)
    return {
        "id": candidate["id"],
        "rl_seed": rl_seed,
        "post_rl_pass@1": post.pass_at_k[1],
        "post_rl_se": standard_error(post.c_per_problem, post.n_per_problem),
        "post_rl_by_steps": by_steps(post.c_per_problem, post.n_per_problem, problems["steps"]),
        "rewards": rewards,
        "rl_seconds": round(rl_s, 1),
        "seconds": round(time.time() - t0, 1),
        "settings": settings.key(),
    }


def step_reward(prompts, completions, operands, operators, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when every step and the answer are right (see toy.steps_are_correct)."""
    from sftrl_callbacks.toy import problem_from_row, steps_are_correct

    rows = [{"operands": o, "operators": p} for o, p in zip(operands, operators)]
    return [float(steps_are_correct(c, problem_from_row(r))) for c, r in zip(completions, rows)]


# -- the grid -----------------------------------------------------------------------------------
def read_rows(path: str, settings: Settings) -> list[dict]:
    """Rows of a results file made under these settings (a torn last line from a kill is skipped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("settings") == settings.key():
                rows.append(row)
    return rows


def append(path: str, row: dict) -> None:
    """One JSON line; after a line torn by a kill, on a line of its own."""
    torn = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(row) + "\n")


def run_jobs(pool: ProcessPoolExecutor, jobs: list[tuple], path: str, describe) -> None:
    """Run (function, *args) jobs in the pool's worker processes; each result is appended as soon as it arrives."""
    start = time.time()
    futures = {pool.submit(fn, *args): args for fn, *args in jobs}
    for done, future in enumerate(as_completed(futures), 1):
        try:
            row = future.result()
        except Exception as err:  # one failed job must not lose the others; a rerun retries it
            print(f"[{time.time() - start:6.0f}s] FAILED {futures[future][:2]}: {err!r}", flush=True)
            continue
        append(path, row)
        print(f"[{time.time() - start:6.0f}s] {done}/{len(jobs)} {describe(row)}", flush=True)


def describe_sft(row: dict) -> str:
    cps = ", ".join(
        f"@{c['step']} p1 {c['pass@1']:.3f} p64 {c.get('pass@64', float('nan')):.3f} L {c['heldout_loss']:.3f}"
        for c in row["checkpoints"]
    )
    return f"SFT {row['regime']} s{row['sft_seed']} ({row['seconds']:.0f}s, rl_start @{row['rl_start_step']}): {cps}"


def describe_rl(row: dict) -> str:
    return (
        f"RL {row['id']} r{row['rl_seed']}: post-RL pass@1 {row['post_rl_pass@1']:.3f} "
        f"(SE {row['post_rl_se']:.4f}, {row['seconds']:.0f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline, not the science")
    parser.add_argument("--pilot", action="store_true", help="only the pilot (noise and RL effect of the setting)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--regimes", nargs="*", default=None, help=f"subset of {list(REGIMES)}")
    parser.add_argument("--sft-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--rl-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--rl-steps", type=int, default=None, help="override the GRPO steps")
    parser.add_argument(
        "--skip-zero-passk",
        action="store_true",
        help="send to RL only checkpoints with post-SFT pass@k > 0 (GRPO cannot learn where no sample is right)",
    )
    parser.add_argument(
        "--turn-pilot",
        action="store_true",
        help=f"the early-stopping pilot: regimes {list(TURN_REGIMES)}, {TURN_SETTINGS}; RL from the checkpoints "
        "analyze.py's per-run rules pick",
    )
    parser.add_argument("--sft-only", action="store_true", help="no RL jobs")
    parser.add_argument("--workers", type=int, default=2, help="jobs side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (jobs share the device)")
    ns = parser.parse_args()
    # One pool for the SFT and the RL jobs: its workers import torch and TRL once (spawned on first use).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(ns.workers, mp_context=context, initializer=_init_worker, initargs=(ns.threads,)) as pool:
        run_grid(pool, parser, ns)


def run_grid(pool: ProcessPoolExecutor, parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    settings = Settings.quick() if ns.quick else Settings()
    if ns.rl_steps is not None:
        settings = Settings(**{**asdict(settings), "rl_steps": ns.rl_steps})
    regimes = ns.regimes or ([PILOT_REGIME] if ns.pilot else list(REGIMES))
    if ns.quick:
        regimes = ns.regimes or ["mixed-300", "short-19k"]
    if ns.turn_pilot:
        settings = Settings(**{**asdict(settings), **TURN_SETTINGS})
        regimes = ns.regimes or list(TURN_REGIMES)
    unknown = set(regimes) - set(ALL_REGIMES)
    if unknown:
        parser.error(f"unknown regimes {sorted(unknown)}; use {list(ALL_REGIMES)}")
    os.makedirs(ns.out, exist_ok=True)
    runs_dir = os.path.join(ns.out, "runs")
    sft_path, rl_path = os.path.join(ns.out, "sft.jsonl"), os.path.join(ns.out, "rl.jsonl")

    done = {(r["regime"], r["sft_seed"]) for r in read_rows(sft_path, settings)}
    jobs = [
        (sft_job, regime, seed, settings, os.path.join(runs_dir, f"{regime}-s{seed}"), ns.device)
        for seed in ns.sft_seeds
        for regime in regimes
        if (regime, seed) not in done
    ]
    print(f"{len(jobs)} SFT runs to do ({len(done)} done)", flush=True)
    run_jobs(pool, jobs, sft_path, describe_sft)

    runs = [r for r in read_rows(sft_path, settings) if r["regime"] in regimes and r["sft_seed"] in ns.sft_seeds]
    runs.sort(key=lambda r: (r["sft_seed"], list(ALL_REGIMES).index(r["regime"])))
    if ns.sft_only:
        return
    candidates = [c for run in runs for c in run["checkpoints"]]
    if ns.turn_pilot:
        candidates = [c for run in runs for c in decision_candidates(run["checkpoints"], settings.passk_n)]
    if ns.pilot:  # RL from the last two checkpoints of the first seed's run: the RL effect and its seed noise
        candidates = min(runs, key=lambda r: r["sft_seed"])["checkpoints"][-2:]
    if ns.skip_zero_passk:
        candidates = [c for c in candidates if c[f"pass@{settings.passk_n}"] > 0]
    candidates = [{**c, "path": os.path.join(runs_dir, c["path"])} for c in candidates]
    done = {(r["id"], r["rl_seed"]) for r in read_rows(rl_path, settings)}
    jobs = [
        (rl_job, c, seed, settings, runs_dir, ns.device)
        for c in candidates  # run by run (first SFT seed first): an interrupted grid leaves whole runs
        for seed in ns.rl_seeds
        if (c["id"], seed) not in done
    ]
    missing = sorted({c["id"] for _, c, *_ in jobs if not os.path.isdir(c["path"])})
    if missing:
        raise SystemExit(f"checkpoints missing for {missing}: delete their SFT rows from {sft_path} to redo them")
    print(f"{len(jobs)} RL runs to do ({len(done)} done)", flush=True)
    run_jobs(pool, jobs, rl_path, describe_rl)


if __name__ == "__main__":
    main()
