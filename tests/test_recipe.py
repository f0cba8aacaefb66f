import ast
import json
import os
import runpy
import sys

import pytest
import yaml

from sftrl_callbacks.io import read_jsonl

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_toy_recipe_runs_the_recipe_script(tmp_path, monkeypatch, capsys):
    """recipes/toy.yaml, shortened, through examples/sft_with_callbacks.py (the path real recipes take), run as
    `__main__` in this process: a child would spend seconds importing what this one has."""
    with open(os.path.join(ROOT, "recipes", "toy.yaml")) as f:
        recipe = yaml.safe_load(f)
    recipe["sft"].update(output_dir=str(tmp_path / "out"), max_steps=20, save_steps=10, logging_steps=10)
    recipe["dataset"].update(n_train=2000, n_heldout_sft=16, n_heldout_problems=4)
    recipe["passk"]["n"] = 4
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script = os.path.join(ROOT, "examples", "sft_with_callbacks.py")
    monkeypatch.setattr(sys, "argv", [script, "--config", str(path)])
    runpy.run_path(script, run_name="__main__")
    assert "RL start:" in capsys.readouterr().out
    start = json.loads((tmp_path / "out" / "sftrl" / "rl_start.json").read_text())
    assert start["metrics"]["passk_metric"] == "sftrl/passk/problems/pass@4"
    # the choice ranked both saves on the values the script's callbacks logged, and points at the saved folder
    logged = {(r["name"], r["step"]): r["value"] for r in read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")}
    ranking = {r["step"]: r for r in start["ranking"]}
    assert sorted(ranking) == [10, 20] and start["step"] == start["ranking"][0]["step"]
    for step, row in ranking.items():
        assert row["heldout_loss"] == pytest.approx(logged[("sftrl/heldout/heldout/loss", step)])
        assert row["passk"] == pytest.approx(logged[("sftrl/passk/problems/pass@4", step)])
    assert start["checkpoint"] == str(tmp_path / "out" / f"checkpoint-{start['step']}")
    assert os.path.isfile(os.path.join(start["path"], "model.safetensors"))  # the checkpoint or its protected copy


def _call_kwargs(tree: ast.AST, name: str) -> dict:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]
    assert len(calls) == 1, f"expected one call of {name}"
    return {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}


def test_readme_real_run_code_is_what_the_smollm2_recipe_runs():
    """The README's "Use it in a real run" code, with the model and data swapped, is what
    examples/sft_with_callbacks.py runs for recipes/smollm2-135m-cpu.yaml: the same constructors, the same values."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Use it in a real run", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    with open(os.path.join(ROOT, "recipes", "smollm2-135m-cpu.yaml")) as f:
        recipe = yaml.safe_load(f)
    assert _call_kwargs(tree, "HeldOutLossCallback") == recipe["heldout_loss"]
    assert _call_kwargs(tree, "PassAtKCallback") == recipe["passk"]
    assert _call_kwargs(tree, "RLReadinessCallback") == recipe["readiness"]
    data = _call_kwargs(tree, "make_word_problem_splits")
    assert data == {k: v for k, v in recipe["dataset"].items() if k != "name"} and recipe["dataset"]["name"] == (
        "word-problems"
    )
    sft = _call_kwargs(tree, "SFTConfig")
    assert sft and all(recipe["sft"][k] == v for k, v in sft.items()), (sft, recipe["sft"])
    # the script builds the trainer from the recipe's sections with these very constructors
    with open(os.path.join(ROOT, "examples", "sft_with_callbacks.py"), encoding="utf-8") as f:
        script = ast.parse(f.read())
    built = {
        n.func.id: ast.unparse(n.keywords[-1].value)
        for n in ast.walk(script)
        if isinstance(n, ast.Call)
        and getattr(n.func, "id", None)
        in ("HeldOutLossCallback", "PassAtKCallback", "RLReadinessCallback", "SFTConfig")
    }
    assert built == {
        "SFTConfig": "recipe['sft']",
        "HeldOutLossCallback": "recipe.get('heldout_loss', {})",
        "PassAtKCallback": "recipe['passk']",
        "RLReadinessCallback": "recipe.get('readiness', {})",
    }
