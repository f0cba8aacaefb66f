"""A 2-rank DDP SFT run of the toy model with the three callbacks (run by tests/test_ddp.py under torchrun).

    torchrun --nproc_per_node 2 tests/ddp_run.py OUTPUT_DIR ddp        # into OUTPUT_DIR/ddp
    torchrun --nproc_per_node 2 tests/ddp_run.py OUTPUT_DIR zero3      # HF Trainer's DeepSpeed ZeRO-3 instead (CPU)
    torchrun --nproc_per_node 2 tests/ddp_run.py OUTPUT_DIR ddp,zero3  # one after the other

Unequal shares on purpose: 7 held-out examples and 7 problems on 2 ranks; the 7 x 4 samples fit in one sampler
call, and the problems are dealt to the ranks one by one whatever the batch size. Each rank writes what its
callbacks hold to OUTPUT_DIR/<way>/rank<r>.json; rank 0 also writes the held-out rows and problems as JSONL so
the test can measure the saved checkpoints in one process with `sftrl eval`.
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")

from counting import CountingSampler  # noqa: E402  (a script's own folder is on its path)
from processes import skip_deepspeed_shm_build  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback  # noqa: E402
from sftrl_callbacks.demo import toy_sft_config  # noqa: E402
from sftrl_callbacks.toy import StepVerifier, build_model, build_tokenizer, make_splits  # noqa: E402


def main(out: str, zero3: bool = False) -> None:
    tokenizer = build_tokenizer()
    splits = make_splits(n_train=2000, n_heldout_sft=7, n_heldout_problems=7, seed=0)
    loss = HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=15, batch_size=2)
    sampler, dynamic_sampler = CountingSampler(), CountingSampler()
    # No step-0 pass@k: the test compares each rank's sampling work with one process measuring the two saved
    # checkpoints (the held-out loss still measures step 0 on the ranks).
    passk = PassAtKCallback(
        {"mixed": splits.heldout_problems},
        verifier=StepVerifier(),
        sampler=sampler,
        n=4,
        max_new_tokens=30,
        seed=3,
        measure_at_start=False,
    )
    # Dynamic allocation: rounds after the first go to unsolved problems, seeded per (round, problem) as well.
    dynamic = PassAtKCallback(
        {"dyn": splits.heldout_problems},
        verifier=StepVerifier(),
        sampler=dynamic_sampler,
        n=4,
        allocation="dynamic",
        initial_n=2,
        max_new_tokens=30,
        seed=3,
        measure_at_start=False,
    )
    readiness = RLReadinessCallback(watch=[loss, passk])
    deepspeed = None
    if zero3:  # checkpoints gather the weights into model.safetensors, so that `sftrl eval` can read them
        skip_deepspeed_shm_build()
        deepspeed = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "zero_optimization": {
                "stage": 3,
                "stage3_param_persistence_threshold": 0,
                "stage3_gather_16bit_weights_on_model_save": True,
            },
        }
    args = toy_sft_config(
        out, 40, [], save_steps=20, per_device_train_batch_size=16, learning_rate=3e-3, deepspeed=deepspeed
    )
    trainer = SFTTrainer(
        model=build_model(tokenizer, seed=0),
        args=args,
        train_dataset=splits.train,
        processing_class=tokenizer,
        callbacks=[loss, passk, dynamic, readiness],
    )
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if rank == 0:
        splits.heldout_sft.to_json(os.path.join(out, "heldout.jsonl"))
        splits.heldout_problems.to_json(os.path.join(out, "problems.jsonl"))
    view = {
        "world": world,
        "loss": loss.history["sftrl/heldout/mixed/loss"],
        "passk": {
            r.step: {
                "n": r.n_per_problem,
                "c": r.c_per_problem,
                "tokens": r.mean_completion_tokens,
                "examples": r.examples,
            }
            for r in passk.results["mixed"]
        },
        "dynamic": {
            r.step: {"n": r.n_per_problem, "c": r.c_per_problem, "examples": r.examples} for r in dynamic.results["dyn"]
        },
        "optimizer": [type(trainer.optimizer).__name__, type(getattr(trainer.optimizer, "optimizer", None)).__name__],
        "hooked_modules": sampler.hooked_modules + dynamic_sampler.hooked_modules,
        "forward_rows": {"passk": sampler.forward_rows, "dynamic": dynamic_sampler.forward_rows},
        "errors": loss.errors + passk.errors + dynamic.errors + readiness.errors,
        "checkpoints": readiness.checkpoints,
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(view, f)


if __name__ == "__main__":
    # Both ways in one launch (each launch spends seconds importing). A second Trainer in a process builds its
    # accelerate state anew only once the first one's is cleared (accelerate's own tests do the same).
    from accelerate.state import AcceleratorState

    for way in sys.argv[2].split(","):
        AcceleratorState._reset_state(reset_partial_state=True)
        main(os.path.join(sys.argv[1], way), zero3=way == "zero3")
