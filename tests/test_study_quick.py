import json
import os
import subprocess
import sys

import pytest

from sftrl_callbacks.predict import fit_table, read_table

STUDY = os.path.join(os.path.dirname(__file__), "..", "examples", "sft_rl_study")


def run(*args: str) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_quick_study_runs_resumes_and_analyses(tmp_path):
    """The pipeline (SFT with callbacks -> GRPO from every checkpoint -> post-RL eval -> analysis), not the science."""
    script = os.path.join(STUDY, "run_study.py")
    out = str(tmp_path)
    # One regime, two SFT seeds: what every table of analyze.py needs (seed pairs, runs to match across).
    log = run(script, "--quick", "--regimes", "mixed-300", "--out", out)
    assert "2 SFT runs to do" in log and "8 RL runs to do" in log, log
    runs = read_table(str(tmp_path / "sft.jsonl"))
    assert sorted((r["regime"], r["sft_seed"]) for r in runs) == [("mixed-300", 0), ("mixed-300", 1)]
    for r in runs:
        assert [c["step"] for c in r["checkpoints"]] == [6, 12]
        assert sum(c["rl_start"] for c in r["checkpoints"]) == 1 and r["checkpoints"][-1]["last"]
        assert {"pass@1", "pass@8", "heldout_loss", "readiness_score"} <= set(r["checkpoints"][0])
    rl = read_table(str(tmp_path / "rl.jsonl"))
    assert len(rl) == 8 and all(r["rewards"] for r in rl), "GRPO logged no reward"
    assert all(0 <= r["post_rl_se"] <= 0.5 for r in rl)

    # An interrupted grid: keep 5 RL rows and a torn line; the rerun does only the 3 missing jobs.
    lines = (tmp_path / "rl.jsonl").read_text().splitlines()
    (tmp_path / "rl.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    log = run(script, "--quick", "--regimes", "mixed-300", "--out", out)
    assert "0 SFT runs to do (2 done)" in log and "3 RL runs to do (5 done)" in log, log
    rl = [r for r in read_table_tolerant(tmp_path / "rl.jsonl")]
    assert sorted((r["id"], r["rl_seed"]) for r in rl) == sorted(
        (c["id"], s) for r in runs for c in r["checkpoints"] for s in (0, 1)
    )

    tables = run(os.path.join(STUDY, "analyze.py"), out)
    for section in ("## Noise and effect sizes", "## Fits: target post-RL pass@1", "## Per SFT run"):
        assert section in tables
    assert "| earlier checkpoint |" in tables and "rule minus last checkpoint" in tables
    assert (tmp_path / "study.png").stat().st_size > 0
    rows = read_table(str(tmp_path / "results.jsonl"))
    assert len(rows) == 4 and all(len(r["post_rl_by_seed"]) == 2 for r in rows)
    report = fit_table(rows, "post_rl_pass@1", signals=["pass@1", "heldout_loss"], resamples=20)
    json.dumps(report.to_json())


def read_table_tolerant(path):
    """The results file after a resume: the torn line stays in it, and the study skips it."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_matched_pairs_split_by_step_with_baselines_and_sign_tests():
    """The matched-pair analysis on three hand-made candidates: one same-step pair, two across steps."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("analyze", os.path.join(STUDY, "analyze.py"))
    analyze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze)

    def candidate(name, step, p64, post):
        return {"name": name, "run": name, "step": step, "pass@1": 0.1, "pass@64": p64, "post_rl_pass@1": post}

    cands = [candidate("a", 400, 0.5, 0.3), candidate("b", 400, 0.6, 0.4), candidate("c", 600, 0.4, 0.2)]
    lines = analyze.matched_table(cands, ["pass@64", "step"], np.random.default_rng(0))
    text = "\n".join(lines)
    assert "3 pairs" in text and "1 at the same SFT step, 2 at different steps" in text
    # b over a, a over c, b over c: all right after RL; where all (or none) agree, the exact binomial interval
    assert "| pass@64 | 3, 1.00 [0.29, 1.00] exact |" in text
    assert "| later checkpoint (step) | 2, 0.00 [0.00, 0.84] exact | 0, - | 2, 0.00 [0.00, 0.84] exact |" in text
    assert "| earlier checkpoint | 2, 1.00 [0.16, 1.00] exact | 0, - | 2, 1.00 [0.16, 1.00] exact |" in text
    # exact binomial, 2 of 2, two-sided; pass@64 right and step wrong in both pairs, whichever candidates are drawn
    assert "| pass@64 vs step | 2 | 2 | 0 | 0.50 | +1.00 [+1.00, +1.00] |" in text
    assert "0 pairs are between weak candidates" in text


def test_decision_table_scores_each_rule_over_the_runs_where_its_pick_has_rl():
    """Run a: its lowest-loss checkpoint got no RL, so that rule is shown '-' there and scored on run b only."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("analyze", os.path.join(STUDY, "analyze.py"))
    analyze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze)

    def candidate(run, step, loss, start, post):
        return {
            "name": f"{run}@{step}", "run": run, "step": step, "pass@1": 0.1, "pass@64": 0.5, "heldout_loss": loss,
            "rl_start": start, "post_rl_by_seed": post, "post_rl_pass@1": float(np.mean(post)) if post else None,
        }  # fmt: skip

    cands = [
        candidate("a", 400, 0.1, False, []),
        candidate("a", 600, 0.2, True, [0.5, 0.5]),
        candidate("b", 400, 0.1, True, [0.3, 0.3]),
        candidate("b", 600, 0.2, False, [0.4, 0.4]),
    ]
    text = "\n".join(analyze.decision_table(cands, 64, np.random.default_rng(0)))
    assert "| a | 0.5000 (@600) | 0.5000 (@600) | - (@400) | 0.5000 (@600) | - (@400) | 0.5000 (@600) |" in text
    # the library's pick: the last checkpoint in a, 0.1 below it in b
    assert "| rl_start.json (library) | 2 | 0 (same pick) | - | +0.0500 [0.0000, +0.1000] | " in text
    assert "| -0.0500 [-0.1000, 0.0000] | 0 / 1 / 1 |" in text
    # the lowest held-out loss: n = 1 (run b), where it is the library's pick, 0.1 below the last checkpoint
    assert "| lowest held-out loss | 1 | 0.0000 [0.0000, 0.0000] | 0 / 1 / 0 | +0.1000 [+0.1000, +0.1000] | " in text
    assert "| -0.1000 [-0.1000, -0.1000] | 0 / 0 / 1 |" in text


def test_turn_pilot_sends_to_rl_exactly_what_a_selection_rule_picks(monkeypatch):
    """RL for the early-stopping comparison: every checkpoint some per-run rule of analyze.py picks, no other."""
    import importlib.util

    monkeypatch.syspath_prepend(STUDY)
    spec = importlib.util.spec_from_file_location("run_study", os.path.join(STUDY, "run_study.py"))
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_study", study)
    spec.loader.exec_module(study)

    def checkpoint(step, loss, p1, p64, pick=False):
        return {"step": step, "heldout_loss": loss, "pass@1": p1, "pass@64": p64, "rl_start": pick}

    cps = [
        checkpoint(100, 0.9, 0.00, 0.10),
        checkpoint(200, 0.2, 0.10, 0.50),  # lowest held-out loss
        checkpoint(300, 0.3, 0.20, 0.60, pick=True),  # best pass@64, the library's pick
        checkpoint(400, 0.4, 0.25, 0.55),  # one save before the last
        checkpoint(500, 0.5, 0.30, 0.55),  # last, best pass@1
    ]
    assert [c["step"] for c in study.decision_candidates(cps, 64)] == [200, 300, 400, 500]
