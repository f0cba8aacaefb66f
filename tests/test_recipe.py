import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_toy_recipe_runs_the_recipe_script(tmp_path):
    """recipes/toy.yaml, shortened, through examples/sft_with_callbacks.py (the path real recipes take)."""
    with open(os.path.join(ROOT, "recipes", "toy.yaml")) as f:
        recipe = yaml.safe_load(f)
    recipe["sft"].update(output_dir=str(tmp_path / "out"), max_steps=20, save_steps=10, logging_steps=10)
    recipe["dataset"].update(n_train=2000, n_heldout_sft=16, n_heldout_problems=4)
    recipe["passk"]["n"] = 4
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "sft_with_callbacks.py"), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RL start:" in proc.stdout
    start = json.loads((tmp_path / "out" / "sftrl" / "rl_start.json").read_text())
    assert start["step"] in (10, 20) and start["metrics"]["passk_metric"] == "sftrl/passk/problems/pass@4"
