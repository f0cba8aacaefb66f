"""`sftrl demo`: a real SFT of the toy model on the toy task with the callbacks, offline, on a CPU."""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass

from . import layout
from .contracts import SamplingParams
from .hf_sampler import HFSampler
from .records import heldout_name, parse_name
from .toy import build_model, build_tokenizer, final_answer, make_splits
from .trackers import is_wandb_available

# What the demo measures, chosen so the callbacks block about 10 % of the SFT wall time on 2 CPU cores
# (docs/cost.md) before the step-0 baseline, which adds one held-out loss and one pass@k measurement:
# 8 held-out loss measurements of 128 examples, pass@64 on 24 problems at the two saves.
DEMO_HELDOUT = {"max_examples": 128, "batch_size": 64}
DEMO_PASSK = {"n": 64, "num_problems": 24, "max_new_tokens": 48}


def demo_settings(max_steps: int = 400) -> str:
    """The demo's monitor settings in words (printed next to its figures)."""
    return (
        f"held-out loss of {DEMO_HELDOUT['max_examples']} examples at step 0 and every {max(1, max_steps // 8)} "
        f"steps; pass@k from {DEMO_PASSK['n']} samples (T=1) of each of {DEMO_PASSK['num_problems']} problems at "
        "step 0 (the baseline) and the two saves, strict step verifier, unbiased estimator"
    )


@dataclass
class DemoResult:
    output_dir: str
    wall_time_s: float
    train_time_s: float
    greedy_accuracy: dict[str, float]
    heldout_losses: list[tuple[int, float]]
    pass_at_k: list[tuple[int, dict[int, float]]]
    callback_time_s: float
    callback_times: dict[str, float]  # blocking seconds per callback
    rl_start: dict | None
    metrics_path: str
    wandb_dir: str | None
    trainer: object


def machine_summary() -> str:
    """The machine figures were measured on, e.g. 'AMD EPYC, 2 cores, torch 2.13.0+cpu, 2026-11-26'."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    return f"{cpu}, {device}, torch {torch.__version__}, {datetime.date.today().isoformat()}"


def toy_sft_config(output_dir: str, max_steps: int, report_to: list[str], seed: int = 0, **overrides):
    """SFTConfig for the toy world on a CPU: fp32, no gradient checkpointing (TRL defaults to both on)."""
    from trl import SFTConfig

    values = dict(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=0.0,
        logging_steps=25,
        save_steps=max(1, max_steps // 4),
        save_total_limit=None,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=128,
        report_to=report_to,
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return SFTConfig(**values)


def greedy_accuracy(model, tokenizer, problems, by_steps: bool = True) -> dict[str, float]:
    """Share of problems whose greedy completion ends with the right `#### answer`, overall and per step count."""
    params = SamplingParams(max_new_tokens=64, temperature=0.0)
    completions = HFSampler(show_progress=False).sample(model, tokenizer, list(problems["prompt"]), 1, params)
    correct = [final_answer(c[0].text) == a for c, a in zip(completions, problems["answer"])]
    out = {"all": sum(correct) / len(correct)}
    if by_steps:
        for k in sorted(set(problems["steps"])):
            hits = [ok for ok, s in zip(correct, problems["steps"]) if s == k]
            out[f"{k}-step"] = sum(hits) / len(hits)
    return out


def run_demo(
    output_dir: str = "sftrl_demo",
    max_steps: int = 400,
    seed: int = 0,
    callbacks=None,
    show_progress: bool = True,
    report_to: list[str] | None = None,
) -> DemoResult:
    """Train the toy model with the sftrl callbacks and return what happened.

    `report_to`: the trackers, each kept offline and under `output_dir` unless its environment says
    otherwise (W&B offline, trackio's database in `<output_dir>/trackio`, MLflow's file store in
    `<output_dir>/mlruns`, TensorBoard in `<output_dir>/runs`); None: W&B when installed.
    """
    from trl import SFTTrainer

    from .callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
    from .toy import StepVerifier

    start = time.time()
    if report_to is None:
        report_to = ["wandb"] if is_wandb_available() else []
    wandb_dir = None
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", output_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
        os.makedirs(os.environ["WANDB_DIR"], exist_ok=True)
        wandb_dir = os.environ["WANDB_DIR"]
    if "trackio" in report_to:
        os.environ.setdefault("TRACKIO_DIR", os.path.abspath(os.path.join(output_dir, "trackio")))
    if "mlflow" in report_to and "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = "file://" + os.path.abspath(os.path.join(output_dir, "mlruns"))
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    splits = make_splits(n_train=20_000, n_heldout_sft=256, n_heldout_problems=96, seed=seed)
    if callbacks is None:
        callbacks = [
            HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=max(1, max_steps // 8), **DEMO_HELDOUT),
            PassAtKCallback({"mixed": splits.heldout_problems}, verifier=StepVerifier(), **DEMO_PASSK),
            RLReadinessCallback(),
        ]
    args = toy_sft_config(
        output_dir,
        max_steps,
        report_to,
        seed=seed,
        disable_tqdm=not show_progress,
        save_steps=max(1, max_steps // 2),
        project="sftrl-demo",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=splits.train, processing_class=tokenizer, callbacks=callbacks
    )
    train_start = time.time()
    trainer.train()
    train_time = time.time() - train_start
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    accuracy = greedy_accuracy(trainer.model, tokenizer, splits.heldout_problems)
    loss_name = heldout_name("mixed", "loss")
    losses = [(h["step"], h[loss_name]) for h in trainer.state.log_history if loss_name in h]
    passk = []
    for h in trainer.state.log_history:
        parsed = {key: parse_name(key) for key in h}
        ks = {p.k: h[key] for key, p in parsed.items() if p and p.dataset == "mixed" and p.k is not None}
        if ks:
            passk.append((h["step"], ks))
    return DemoResult(
        output_dir=output_dir,
        wall_time_s=time.time() - start,
        train_time_s=train_time,
        greedy_accuracy=accuracy,
        heldout_losses=losses,
        pass_at_k=passk,
        callback_time_s=sum(getattr(cb, "time_spent_s", 0.0) for cb in callbacks),
        callback_times={type(cb).__name__: cb.time_spent_s for cb in callbacks if hasattr(cb, "time_spent_s")},
        rl_start=next((cb.rl_start for cb in callbacks if isinstance(cb, RLReadinessCallback)), None),
        metrics_path=layout.metrics_path(output_dir),
        wandb_dir=wandb_dir,
        trainer=trainer,
    )
