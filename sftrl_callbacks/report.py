"""`sftrl report`: one self-contained page from a run's output directory (no W&B needed).

Reads `<output_dir>/sftrl/metrics.jsonl`, the per-step pass@k JSON files and `rl_start.json`, and
writes `<output_dir>/sftrl/report.png` (four panels) and `report.html` (the PNG inlined plus tables).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from . import layout
from .io import read_jsonl
from .records import parse_name
from .sinks import Image, Table


def passk_curve_table(result: Any, step: int) -> Table:
    """A `PassAtKResult` as a table of pass@k vs k, drawn as a line in trackers that draw tables."""
    points = {**result.pass_at_k, **{k: v["estimate"] for k, v in result.extrapolated.items()}}
    rows = [[k, v, step] for k, v in sorted(points.items())]
    return Table(["k", "pass@k", "step"], rows, ("k", "pass@k"), f"{result.dataset}: pass@k vs k at step {step}")


def run_panels(
    output_dir: str, series: Mapping[str, Mapping[int, float]], flags: Sequence[Any]
) -> list[tuple[str, Table | Image]]:
    """The end-of-run panels for trackers that take media: a timeline table (held-out loss, pass@large-k,
    pass@1 and flags by step), the loss drawn as a chart, and the rendered report."""
    loss, passk, pass1 = (series.get(kind, {}) for kind in ("loss", "passk", "pass1"))
    flagged = {f.began_step: f.kind for f in flags}
    rows = [[s, loss.get(s), passk.get(s), pass1.get(s), flagged.get(s, "")] for s in sorted(set(loss) | set(passk))]
    columns = ["step", "heldout_loss", "pass@large_k", "pass@1", "flag"]
    panels: list[tuple[str, Table | Image]] = [("timeline", Table(columns, rows))]
    if loss:
        title = "held-out loss vs step (flags in the timeline table)"
        panels.append(("heldout_loss_chart", Table(columns, rows, ("step", "heldout_loss"), title)))
    png, _ = render_report(output_dir)
    panels.append(("report", Image(png, "sftrl report: flags red, RL start green")))
    return panels


def _load(output_dir: str) -> dict:
    path = layout.metrics_path(output_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {path}: is {output_dir} the output_dir of a run with sftrl callbacks?")
    series: dict[str, dict[int, float]] = defaultdict(dict)
    flags = []
    for r in read_jsonl(path):
        if r["name"].startswith("sftrl/readiness/flag/"):
            flags.append(r)
        elif isinstance(r.get("value"), (int, float)):
            series[r["name"]][int(r["step"])] = float(r["value"])
    curves = defaultdict(dict)  # set -> step -> {k: value}
    for p in layout.passk_step_files(output_dir):
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
        points = {int(k): v for k, v in data["pass_at_k"].items()}
        points.update({int(k): v["estimate"] for k, v in data.get("extrapolated", {}).items()})
        curves[data["dataset"]][int(data["step"])] = points
    rl_start = None
    if os.path.exists(layout.rl_start_path(output_dir)):
        with open(layout.rl_start_path(output_dir), encoding="utf-8") as f:
            rl_start = json.load(f)
    return {"series": series, "flags": flags, "curves": curves, "rl_start": rl_start}


def render_report(output_dir: str) -> tuple[str, str]:
    """Write report.png and report.html under `<output_dir>/sftrl/`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _load(output_dir)
    series, flags, curves, rl_start = data["series"], data["flags"], data["curves"], data["rl_start"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax_loss, ax_passk, ax_curve, ax_gap = axes.ravel()

    def mark(ax):
        for flag in flags:
            ax.axvline(flag["began_step"], color="tab:red", ls="--", lw=1)
            ax.text(
                flag["began_step"],
                ax.get_ylim()[1],
                " " + flag["name"].rsplit("/", 1)[1],
                color="tab:red",
                va="top",
                fontsize=8,
                rotation=90,
            )
        if rl_start:
            ax.axvline(rl_start["step"], color="tab:green", lw=2, alpha=0.6)

    parsed = {name: metric for name in series if (metric := parse_name(name)) is not None}
    for name, metric in sorted(parsed.items(), key=lambda item: (item[1].dataset or "", item[1].k or 0)):
        points = series[name]
        steps = sorted(points)
        if metric.group == "heldout" and metric.field in ("loss", "gap"):
            ax = ax_loss if metric.field == "loss" else ax_gap
            ax.plot(steps, [points[s] for s in steps], "o-", ms=3, label=metric.dataset)
        if metric.k is not None:
            ax_passk.plot(steps, [points[s] for s in steps], "o-", ms=3, label=f"{metric.dataset} pass@{metric.k}")
    ax_loss.set(title="held-out loss vs step (token-weighted NLL)", xlabel="step", ylabel="loss")
    ax_passk.set(title="pass@k vs step", xlabel="step", ylabel="pass@k", ylim=(-0.02, 1.02))
    ax_gap.set(title="held-out minus training loss", xlabel="step", ylabel="gap")
    for ax in (ax_loss, ax_passk, ax_gap):
        mark(ax)
        if ax.lines:
            ax.legend(fontsize=7)
    cmap = plt.get_cmap("viridis")
    for name, by_step in curves.items():
        steps = sorted(by_step)
        for i, step in enumerate(steps):
            ks = sorted(by_step[step])
            ax_curve.plot(
                ks,
                [by_step[step][k] for k in ks],
                "o-",
                ms=3,
                color=cmap(i / max(1, len(steps) - 1)),
                label=f"{name} step {step}",
            )
    ax_curve.set(title="pass@k vs k per checkpoint", xlabel="k", ylabel="pass@k", xscale="log", ylim=(-0.02, 1.02))
    if ax_curve.lines:
        ax_curve.legend(fontsize=7)
    title = "sftrl report"
    if rl_start:
        title += f" - RL start: step {rl_start['step']} (green line)"
    fig.suptitle(title)
    fig.tight_layout()
    png, page_path = layout.report_paths(output_dir)
    fig.savefig(png, dpi=90)
    plt.close(fig)

    with open(png, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    rows = "".join(
        f"<tr><td>{f['step']}</td><td>{html.escape(f['name'].rsplit('/', 1)[1])}</td><td>{f['began_step']}</td>"
        f"<td>{html.escape(f.get('detail', ''))}</td></tr>"
        for f in flags
    )
    start = (
        f"<p><b>RL start:</b> step {rl_start['step']} &mdash; <code>{html.escape(rl_start['path'])}</code><br>"
        f"{html.escape(rl_start['why'])}</p>"
        if rl_start
        else "<p>No RL-start checkpoint chosen (no RLReadinessCallback, or no checkpoint saved).</p>"
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>sftrl report</title>"
        "<body style='font-family:sans-serif;max-width:1200px'>"
        f"<h1>sftrl report: {html.escape(os.path.abspath(output_dir))}</h1>{start}"
        f"<img alt='sftrl report' style='width:100%' src='data:image/png;base64,{encoded}'>"
        "<h2>Flags</h2><table border=1 cellpadding=4><tr><th>confirmed at</th><th>flag</th><th>began at</th>"
        f"<th>detail</th></tr>{rows or '<tr><td colspan=4>none</td></tr>'}</table></body>"
    )
    with open(page_path, "w", encoding="utf-8") as f:
        f.write(page)
    return png, page_path
