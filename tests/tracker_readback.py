"""Read the sftrl scalars back from each tracker's own storage, with that tracker's own reader.

Each reader returns {(name, step): value} for the names starting with `sftrl/` (MLflow's rewritten names
are mapped back by the caller).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from tests import wandb_offline


def tensorboard(logdir: str) -> dict[tuple[str, int], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for folder in {
        os.path.dirname(p) for p in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)
    }:
        acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("sftrl/"):
                out.update({(tag, e.step): e.value for e in acc.Scalars(tag)})
    return out


def tensorboard_text(logdir: str, tag: str) -> dict[int, str]:
    """step -> the text (TensorBoard's Text tab) written under `tag`, texts of one step joined by newlines."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, str] = {}
    for folder in {
        os.path.dirname(p) for p in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)
    }:
        acc = EventAccumulator(folder, size_guidance={"tensors": 0})
        acc.Reload()
        for name in acc.Tags().get("tensors", []):
            if name != tag and not name.startswith(tag + "/"):  # add_text files `tag` as `tag/text_summary`
                continue
            for e in acc.Tensors(name):
                text = b"".join(e.tensor_proto.string_val).decode()
                out[e.step] = f"{out[e.step]}\n{text}" if e.step in out else text
    return out


def mlflow(tracking_uri: str) -> dict[tuple[str, int], float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
    out = {}
    for key in runs[0].data.metrics:
        if key.startswith("sftrl/"):
            out.update({(key, m.step): m.value for m in client.get_metric_history(runs[0].info.run_id, key)})
    return out


def scalars(row: dict, step) -> dict[tuple[str, int], float]:
    # W&B flattens a logged table into `<name>_table/ncols`-style keys: media, not sftrl scalars
    return {
        (k, int(step)): v
        for k, v in row.items()
        if k.startswith("sftrl/") and "_table/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def trackio(trackio_dir: str, project: str) -> dict[tuple[str, int], float]:
    # trackio fixes its folder (TRACKIO_DIR) when first imported: read in a process of its own
    code = (
        "import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; p = sys.argv[1]; "
        "runs = S.get_runs(p); print(json.dumps({'runs': runs, 'logs': S.get_logs(p, runs[0]) if runs else []}, "
        "default=str))"
    )
    env = {**os.environ, "TRACKIO_DIR": trackio_dir}
    proc = subprocess.run([sys.executable, "-c", code, project], capture_output=True, text=True, env=env, check=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(data["runs"]) == 1, f"expected one trackio run, found {data['runs']}"
    out = {}
    for row in data["logs"]:
        out.update(scalars(row, row.get("train/global_step")))
    return out


def wandb(wandb_dir: str) -> dict[tuple[str, int], float]:
    rows = wandb_offline.history(wandb_offline.run_file(wandb_dir))
    media = {k[: -len("/_type")] for row in rows for k in row if k.endswith("/_type")}  # tables, images
    out = {}
    for row in rows:
        kept = {k: v for k, v in row.items() if not any(k.startswith(m + "/") or k == m for m in media)}
        out.update(scalars(kept, row.get("train/global_step")))
    return out
