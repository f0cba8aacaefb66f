"""`sftrl fit`: how well each SFT-time signal predicts the post-RL score (numpy / scipy).

Input: a table (CSV or JSONL), one row per SFT candidate, with signal columns (e.g. `pass@1`,
`heldout_loss`, `pass@64`) and a target column (e.g. `post_rl_pass@1`) filled in for the candidates
that went through RL. For each signal, on the calibrated rows:
- a linear predictor target ~ a * signal + b, its R² (in sample) and leave-one-out mean absolute error;
- Spearman's rank correlation;
- selection regret: best target minus the target of the row the predictor ranks first;
- 95 % percentile-bootstrap intervals over rows (own seeded generator) for R², Spearman and regret.
The combined signal `loss+passk` is a two-feature linear fit. Uncalibrated rows get predictions.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats


def read_table(path: str) -> list[dict]:
    """Rows of a CSV or JSONL table; a bad JSON line is an error that names its line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not path.endswith(".jsonl"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {number} is not JSON: {err.msg}") from err
    return rows


def _num(value) -> float | None:
    """A finite number, else None (empty, NaN, inf, text)."""
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _is_numeric_cell(value) -> bool:
    """Empty, a number or NaN / inf: what a signal column may hold (text may not)."""
    if value is None or value == "":
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


@dataclass
class SignalFit:
    signal: str
    n: int
    slope: float
    intercept: float
    r2: float
    r2_ci: tuple[float, float]
    spearman: float
    spearman_ci: tuple[float, float]
    loo_mae: float
    regret: float
    regret_ci: tuple[float, float]
    picked: str


def _design(rows: Sequence[dict], features: Sequence[str]) -> np.ndarray:
    return np.array([[_num(r[f]) for f in features] for r in rows], dtype=float)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    design = np.column_stack([x, np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef


def _predict(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.column_stack([x, np.ones(len(x))]) @ coef


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum((y - pred) ** 2) / total) if total > 0 else float("nan")


def _stats(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    coef = _fit(x, y)
    pred = _predict(coef, x)
    # A rank correlation is undefined for fewer than 3 points or a constant side (e.g. a feature that
    # did not vary across the runs): NaN, without scipy's warning.
    defined = len(y) > 2 and np.ptp(pred) > 0 and np.ptp(y) > 0
    rho = stats.spearmanr(pred, y).statistic if defined else float("nan")
    regret = float(y.max() - y[int(np.argmax(pred))])
    return _r2(y, pred), float(rho), regret


def fit_signal(
    rows: Sequence[dict],
    features: Sequence[str],
    target: str,
    name: str,
    id_column: str,
    resamples: int = 1000,
    seed: int = 0,
) -> SignalFit:
    x, y = _design(rows, features), np.array([_num(r[target]) for r in rows])
    if len(y) < 3:
        raise ValueError(f"Need at least 3 calibrated rows to fit {name}; got {len(y)}.")
    coef = _fit(x, y)
    r2, rho, regret = _stats(x, y)
    loo = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        loo.append(abs(_predict(_fit(x[keep], y[keep]), x[i : i + 1])[0] - y[i]))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        if np.unique(idx).size < 3 or np.ptp(y[idx]) == 0:
            continue
        boot.append(_stats(x[idx], y[idx]))
    boot = np.array(boot)

    def ci(column: int) -> tuple[float, float]:
        values = boot[:, column][np.isfinite(boot[:, column])] if len(boot) else np.array([])
        return (
            (float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975)))
            if len(values)
            else (float("nan"), float("nan"))
        )

    pred = _predict(coef, x)
    # Spearman of the predictor's ranking: for one feature this is the signal's |rho| with the sign of
    # the fitted slope, so a signal where lower is better (loss) shows a positive value when it predicts well.
    return SignalFit(
        signal=name,
        n=len(y),
        slope=float(coef[0]) if len(features) == 1 else float("nan"),
        intercept=float(coef[-1]),
        r2=r2,
        r2_ci=ci(0),
        spearman=rho,
        spearman_ci=ci(1),
        loo_mae=float(np.mean(loo)),
        regret=regret,
        regret_ci=ci(2),
        picked=str(rows[int(np.argmax(pred))].get(id_column, int(np.argmax(pred)))),
    )


@dataclass
class FitReport:
    target: str
    calibrated: int
    fits: list[SignalFit]
    predictions: list[dict]
    best_signal: str
    notes: list[str] = field(default_factory=list)  # rows and signals left out, and why

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "calibrated": self.calibrated,
            "best_signal": self.best_signal,
            "fits": [asdict(f) for f in self.fits],
            "predictions": self.predictions,
            "notes": self.notes,
            "method": "linear least squares per signal; R2 in sample; LOO mean absolute error; Spearman of the "
            "predictor vs target; 95% percentile bootstrap over rows (1000 resamples, seed 0)",
        }


def default_signals(rows: Sequence[dict], target: str, id_column: str) -> list[str]:
    """Columns whose cells are all numbers, NaN or empty, with at least one finite number."""
    columns = [c for c in rows[0] if c not in (target, id_column)]
    return [
        c
        for c in columns
        if all(_is_numeric_cell(r.get(c)) for r in rows) and any(_num(r.get(c)) is not None for r in rows)
    ]


def fit_table(
    rows: Sequence[dict],
    target: str,
    signals: Sequence[str] | None = None,
    id_column: str = "name",
    loss_column: str = "heldout_loss",
    passk_column: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> FitReport:
    """Fit every signal (see module doc). Rows with an empty / NaN / inf cell are handled by rule and reported
    in `notes`: no finite target -> predicted, not fitted; no finite signal -> left out of that signal's fit;
    a signal with fewer than 3 usable rows or one value -> not fitted."""
    if not rows:
        raise ValueError("The table is empty.")
    if target not in rows[0]:
        raise ValueError(f"No target column {target!r}; columns: {sorted(rows[0])}.")
    signals = list(signals or default_signals(rows, target, id_column))
    if not signals:
        raise ValueError(f"No numeric signal column besides {target!r}; columns: {sorted(rows[0])}.")
    missing = [s for s in signals if s not in rows[0]]
    if missing:
        raise ValueError(f"Signal column(s) {missing} not in the table; columns: {sorted(rows[0])}.")
    for s in signals:
        bad = next((i for i, r in enumerate(rows) if not _is_numeric_cell(r.get(s))), None)
        if bad is not None:
            raise ValueError(f"Signal column {s!r} is not numeric: row {bad + 1} holds {rows[bad].get(s)!r}.")
    if not all(_is_numeric_cell(r.get(target)) for r in rows):
        raise ValueError(f"Target column {target!r} holds text; it must be numbers (empty or NaN = not measured).")

    def label(row: dict, i: int) -> str:
        return str(row.get(id_column, f"row {i + 1}"))

    notes = []
    calibrated = [r for r in rows if _num(r.get(target)) is not None]
    uncalibrated = len(rows) - len(calibrated)
    if uncalibrated:
        notes.append(f"{uncalibrated} row(s) without a finite {target}: predicted, not fitted")
    features = {s: [s] for s in signals}
    if passk_column is None:
        ks = [c for c in signals if c.startswith("pass@") and c != "pass@1" and c.split("@")[1].isdigit()]
        passk_column = max(ks, key=lambda c: int(c.split("@")[1])) if ks else None
    if loss_column in signals and passk_column in signals:
        features[f"{loss_column}+{passk_column}"] = [loss_column, passk_column]
    fits, usable_features = [], {}
    for name, feature in features.items():
        finite = [all(_num(r.get(f)) is not None for f in feature) for r in calibrated]
        usable = [r for r, ok in zip(calibrated, finite) if ok]
        skipped = [label(r, i) for i, (r, ok) in enumerate(zip(calibrated, finite)) if not ok]
        if skipped:
            notes.append(f"{name}: {len(skipped)} row(s) without a finite value left out: {', '.join(skipped[:8])}")
        if len(usable) < 3:
            notes.append(f"{name}: not fitted: needs at least 3 calibrated rows with a finite value, has {len(usable)}")
            continue
        if any(len({_num(r[f]) for r in usable}) == 1 for f in feature):
            notes.append(f"{name}: not fitted: it has one value on every usable row")
            continue
        fits.append(fit_signal(usable, feature, target, name, id_column, resamples, seed))
        usable_features[name] = usable
    if not fits:
        raise ValueError("No signal could be fitted: " + "; ".join(notes))
    best = min(fits, key=lambda f: f.loo_mae)
    used = usable_features[best.signal]
    coef = _fit(_design(used, features[best.signal]), np.array([_num(c[target]) for c in used]))
    predictions = []
    for i, r in enumerate(rows):
        if _num(r.get(target)) is not None:
            continue
        if any(_num(r.get(f)) is None for f in features[best.signal]):
            notes.append(f"{label(r, i)}: no prediction, its {best.signal} is not a finite number")
            continue
        pred = float(_predict(coef, _design([r], features[best.signal]))[0])
        predictions.append({"name": r.get(id_column), "predicted": pred, "by": best.signal})
    predictions.sort(key=lambda p: -p["predicted"])
    return FitReport(target, len(calibrated), fits, predictions, best.signal, notes)


def format_report(report: FitReport) -> str:
    lines = [
        f"target: {report.target}   calibrated rows: {report.calibrated}   (95% bootstrap CIs)",
        f"{'signal':<28}{'R2':>7} {'[CI]':<16}{'Spearman':>9} {'[CI]':<16}{'LOO MAE':>9}{'regret':>8} "
        f"{'[CI]':<16}picks",
    ]
    for f in report.fits:
        lines.append(
            f"{f.signal:<28}{f.r2:7.3f} [{f.r2_ci[0]:.2f},{f.r2_ci[1]:.2f}]".ljust(52)
            + f"{f.spearman:9.3f} [{f.spearman_ci[0]:.2f},{f.spearman_ci[1]:.2f}]".ljust(26)
            + f"{f.loo_mae:9.4f}{f.regret:8.4f} [{f.regret_ci[0]:.3f},{f.regret_ci[1]:.3f}]  {f.picked}"
        )
    lines.append(f"best predictor by leave-one-out error: {report.best_signal}")
    lines += [f"note: {note}" for note in report.notes]
    if report.predictions:
        lines.append("uncalibrated candidates, ranked by predicted target:")
        lines += [f"  {p['name']}: {p['predicted']:.4f}" for p in report.predictions]
    return "\n".join(lines)


def plot_report(report: FitReport, rows: Sequence[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [f for f in report.fits if "+" not in f.signal]
    fig, axes = plt.subplots(1, max(1, len(single)), figsize=(4 * max(1, len(single)), 3.6), squeeze=False)
    calibrated = [r for r in rows if _num(r.get(report.target)) is not None]
    for ax, fit in zip(axes[0], single):
        points = [(_num(r.get(fit.signal)), _num(r[report.target])) for r in calibrated]
        x, y = zip(*[(a, b) for a, b in points if a is not None])
        ax.scatter(x, y, s=18)
        xs = np.linspace(min(x), max(x), 20)
        ax.plot(xs, fit.slope * xs + fit.intercept, color="tab:red")
        ax.set(xlabel=fit.signal, ylabel=report.target, title=f"R²={fit.r2:.2f}  ρ={fit.spearman:.2f}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
