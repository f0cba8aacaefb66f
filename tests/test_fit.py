import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from sftrl_callbacks.predict import fit_table


def synthetic_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(12):
        loss = rng.uniform(0.1, 1.0)
        passk = rng.uniform(0.3, 0.95)
        pass1 = rng.uniform(0.1, 0.6)
        rows.append(
            {
                "name": f"c{i}",
                "pass@1": pass1,
                "heldout_loss": loss,
                "pass@64": passk,
                "post_rl_pass@1": 0.2 + 0.5 * passk + rng.normal(0, 0.02),
            }
        )
    rows.append({"name": "new-a", "pass@1": 0.3, "heldout_loss": 0.5, "pass@64": 0.9, "post_rl_pass@1": ""})
    rows.append({"name": "new-b", "pass@1": 0.5, "heldout_loss": 0.4, "pass@64": 0.4, "post_rl_pass@1": ""})
    return rows


def test_fit_reproduces_known_r2_spearman_and_regret():
    rows = synthetic_rows()
    report = fit_table(rows, "post_rl_pass@1", resamples=300)
    fits = {f.signal: f for f in report.fits}
    calibrated = rows[:12]
    y = np.array([r["post_rl_pass@1"] for r in calibrated])
    for signal in ("pass@1", "heldout_loss", "pass@64"):
        x = np.array([r[signal] for r in calibrated])
        reg = stats.linregress(x, y)
        assert fits[signal].r2 == pytest.approx(reg.rvalue**2, abs=1e-9)
        assert fits[signal].slope == pytest.approx(reg.slope, abs=1e-9)
        assert abs(fits[signal].spearman) == pytest.approx(abs(stats.spearmanr(x, y).statistic), abs=1e-9)
    assert fits["pass@64"].r2 > 0.95 and fits["pass@64"].r2_ci[0] > 0.8
    assert fits["pass@64"].regret == pytest.approx(y.max() - y[np.argmax([r["pass@64"] for r in calibrated])])
    assert "heldout_loss+pass@64" in fits
    assert report.best_signal in ("pass@64", "heldout_loss+pass@64")
    assert [p["name"] for p in report.predictions] == ["new-a", "new-b"]


def test_exact_linear_signal_gives_r2_one():
    rows = [{"name": str(i), "s": float(i), "t": 3.0 * i + 1} for i in range(6)]
    fit = fit_table(rows, "t", resamples=50).fits[0]
    assert fit.r2 == pytest.approx(1.0) and fit.spearman == pytest.approx(1.0) and fit.loo_mae < 1e-9
    assert fit.regret == 0.0


def test_rank_correlation_of_a_constant_side_is_nan_without_a_warning():
    """Bootstrap resamples of few runs often repeat one run, so one side can be constant."""
    import warnings

    from sftrl_callbacks.predict import _stats

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns on a constant input; the fit must not ask it
        r2, rho, regret = _stats(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 0.5, 0.5, 0.5]))
        assert np.isnan(rho) and np.isnan(r2) and regret == 0.0
        assert np.isnan(_stats(np.array([2.0, 2.0, 2.0]), np.array([0.1, 0.2, 0.3]))[1])


def test_bad_tables():
    with pytest.raises(ValueError, match="target"):
        fit_table([{"a": 1}], "post_rl")
    with pytest.raises(ValueError, match="at least 3"):
        fit_table([{"a": 1, "t": 1}, {"a": 2, "t": 2}], "t")


def test_cli_writes_table_json_and_plot(tmp_path):
    rows = synthetic_rows()
    path = tmp_path / "grid.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sftrl_callbacks.cli",
            "fit",
            str(path),
            "--json",
            str(tmp_path / "fit.json"),
            "--plot",
            str(tmp_path / "fit.png"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pass@64" in out and "new-a" in out
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["calibrated"] == 12 and (tmp_path / "fit.png").stat().st_size > 1000
