"""A toy SFT run that reports to the trackers named on the command line (run by tests/test_trackers.py).

    python tests/trackers_run.py OUTPUT_DIR tensorboard mlflow trackio wandb

A process of its own: trackio reads TRACKIO_DIR when imported, and MLflow and W&B keep process-wide runs.
Each tracker stores under OUTPUT_DIR. Pass@k of saved checkpoints runs in the background, so the last
checkpoint's result arrives after the Trainer's integrations closed their runs (on_train_end), and the
step-0 baseline is measured before the first log.
"""

import os
import sys

out, trackers = sys.argv[1], sys.argv[2:]
os.environ["TRACKIO_DIR"] = os.path.join(out, "trackio")
os.environ["MLFLOW_TRACKING_URI"] = "file://" + os.path.join(out, "mlruns")
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses its file store without it
os.environ["WANDB_DIR"] = out
os.environ["WANDB_MODE"] = "offline"

import torch  # noqa: E402

torch.set_num_threads(2)

from trl import SFTTrainer  # noqa: E402

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback  # noqa: E402
from sftrl_callbacks.demo import toy_sft_config  # noqa: E402
from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits  # noqa: E402

tokenizer = build_tokenizer()
splits = make_splits(n_train=960, n_heldout_sft=24, n_heldout_problems=6, seed=0)  # 30 steps of 32
args = toy_sft_config(os.path.join(out, "out"), 30, trackers, save_steps=15, logging_steps=5)
args.project = "sftrl-trackers"
callbacks = [
    HeldOutLossCallback(splits.heldout_sft, every_n_steps=10),
    PassAtKCallback(
        splits.heldout_problems, verifier="toy-steps", n=4, max_new_tokens=40, background=True, save_completions=True
    ),
    RLReadinessCallback(),
]
model = build_model(tokenizer, seed=0)
SFTTrainer(model=model, args=args, train_dataset=splits.train, processing_class=tokenizer, callbacks=callbacks).train()
if "wandb" in trackers:
    import wandb

    wandb.finish()
