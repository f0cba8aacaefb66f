"""`sftrl report`: one self-contained page from a run's output directory (no W&B needed).

Reads `<output_dir>/sftrl/metrics.jsonl`, the per-step pass@k JSON files and `rl_start.json`, and
writes `<output_dir>/sftrl/report.png` (four panels) and `report.html` (the PNG inlined plus tables).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from . import layout
from .io import read_jsonl
from .records import heldout_name, parse_name
from .sinks import Image, Table
from .verifiers.reasoning import ReasoningFormat


def passk_curve_table(result: Any, step: int) -> Table:
    """A `PassAtKResult` as a table of pass@k vs k, drawn as a line in trackers that draw tables."""
    points = {**result.pass_at_k, **{k: v["estimate"] for k, v in result.extrapolated.items()}}
    rows = [[k, v, step] for k, v in sorted(points.items())]
    return Table(["k", "pass@k", "step"], rows, ("k", "pass@k"), f"{result.dataset}: pass@k vs k at step {step}")


COMPLETION_COLUMNS = ["problem", "prompt", "completion", "correct", "expected", "tokens", "truncated"]


def completion_record(completion: str | Mapping[str, Any]) -> Mapping[str, Any]:
    """One kept completion as a record; results written before verdicts were kept hold bare text."""
    if isinstance(completion, str):
        return {"completion": completion, "correct": None, "tokens": None, "truncated": None}
    return completion


def prompt_turns(prompt: str | Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """A prompt as (role, text) turns: a chat prompt's messages, or plain text as one turn without a role."""
    if isinstance(prompt, str):
        return [("", prompt)]
    return [
        (str(m.get("role", "")), m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
        for m in prompt
    ]


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """A prompt as readable text: plain text as it is, a chat prompt one `role: text` line a turn."""
    return "\n".join(f"{role}: {text}" if role else text for role, text in prompt_turns(prompt))


def split_thinking(completion: Mapping[str, Any], reasoning: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """(thinking, answer) of a kept completion record by its measurement's reasoning delimiters: ("", whole) without
    them, (whole, None) for an unfinished thought (as grading found it: the record says so)."""
    text = completion["completion"]
    if not reasoning:
        return "", text
    if completion.get("unfinished"):
        return text, None
    region = ReasoningFormat(*reasoning["delimiters"]).split(text)
    return (text, None) if region.unfinished else (region.thinking, region.answer)


def clip(text: str, keep: int = 160) -> str:
    """`text` with its middle cut to ` [... N characters ...] ` when longer than `keep`."""
    if len(text) <= keep:
        return text
    head, tail = keep * 2 // 3, keep // 3
    return f"{text[:head]} [... {len(text) - head - tail} characters ...] {text[-tail:]}"


def completions_table(result: Any, step: int) -> Table:
    """The first completions of the first problems of a `PassAtKResult` (its `examples`), to read in a tracker. With
    a reasoning format the thinking is clipped to its start and end and the answer shown in full."""
    reasoning = result.reasoning if getattr(result, "reasoning", None) and result.reasoning.get("seen") else None
    rows = []
    for i, example in enumerate(result.examples):
        for c in map(completion_record, example["completions"]):
            prompt, text = prompt_text(example["prompt"]), c["completion"]
            if reasoning:
                thinking, answer = split_thinking(c, reasoning)
                text = clip(thinking) + ("" if answer is None else answer)
            row = [i, prompt, text, c["correct"], example["answer"], c["tokens"], c["truncated"]]
            rows.append(row + ([c.get("thinking_tokens"), c.get("unfinished")] if reasoning else []))
    columns = COMPLETION_COLUMNS + (["thinking_tokens", "unfinished"] if reasoning else [])
    return Table(columns, rows, title=f"{result.dataset}: sampled completions at step {step}")


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
    flags, failures = [], []
    for r in read_jsonl(path):
        if r["name"].startswith("sftrl/readiness/flag/"):
            flags.append(r)
        elif r["name"].startswith("sftrl/failure/"):
            failures.append(r)
        elif isinstance(r.get("value"), (int, float)):
            series[r["name"]][int(r["step"])] = float(r["value"])
    results: dict[str, dict[int, dict]] = defaultdict(dict)  # set -> step -> the measurement's JSON
    for p in layout.passk_step_files(output_dir):
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
        results[data["dataset"]][int(data["step"])] = data
    rl_start = None
    if os.path.exists(layout.rl_start_path(output_dir)):
        with open(layout.rl_start_path(output_dir), encoding="utf-8") as f:
            rl_start = json.load(f)
    return {"series": series, "flags": flags, "failures": failures, "results": results, "rl_start": rl_start}


def _interval(result: Mapping[str, Any] | None, k: int) -> tuple[float, float, float] | None:
    """(estimate, low, high) of pass@k in one measurement's JSON: measured with its bootstrap interval, else
    extrapolated with its own; None when the measurement has no such k."""
    if result is None:
        return None
    measured, extrapolated = result["pass_at_k"].get(str(k)), result.get("extrapolated", {}).get(str(k))
    if measured is not None and str(k) in result.get("ci", {}):
        ci = result["ci"][str(k)]
        return measured, ci["low"], ci["high"]
    if extrapolated is not None:
        return extrapolated["estimate"], extrapolated["low"], extrapolated["high"]
    return None


def _watched(data: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The pass@k set and large k the report centres on: the RL-start choice's, else the first set's largest k."""
    metric = (data["rl_start"] or {}).get("metrics", {}).get("passk_metric")
    parsed = parse_name(metric) if metric else None
    if parsed is not None and parsed.k is not None:
        return parsed.dataset, parsed.k
    for name, by_step in data["results"].items():
        ks = {int(k) for result in by_step.values() for k in result["pass_at_k"]}
        if ks:
            return name, max(ks)
    return None, None


def candidate_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per saved checkpoint the RL-start choice ranked (else per pass@k measurement after step 0):
    step, held-out loss, pass@1 and pass@large-k with 95 % intervals, readiness score, flags, picked; first
    the step-0 baseline, when measured (the model before SFT: a reference, not a candidate)."""
    passk_set, k = _watched(data)
    rl_start = data["rl_start"] or {}
    loss_name = next((n for n in data["series"] if n.startswith("sftrl/heldout/") and n.endswith("/loss")), None)
    losses = data["series"].get(loss_name, {}) if loss_name else {}
    scores = {r["step"]: r["score"] for r in rl_start.get("ranking", [])}
    excluded = {e["step"]: e["reason"] for e in rl_start.get("excluded", [])}
    by_step = data["results"].get(passk_set, {}) if passk_set else {}
    steps = sorted(set(scores) | set(excluded)) or sorted(s for s in by_step if s > 0)
    if 0 in by_step or 0 in losses:
        steps = [0, *steps]
    rows = []
    for step in steps:
        result = by_step.get(step)
        flags = [f["name"].rsplit("/", 1)[1] for f in data["flags"] if f.get("began_step", math.inf) <= step]
        rows.append(
            {
                "step": step,
                "heldout_loss": losses.get(step),
                "pass@1": _interval(result, 1),
                f"pass@{k}": _interval(result, k) if k else None,
                "score": scores.get(step),
                "reasoning": _reasoning_cell(result, data["series"], loss_name, step),
                "flags": "baseline: the model before SFT, not a checkpoint"
                if step == 0
                else ", ".join(flags) + (f" (excluded: {excluded[step]})" if step in excluded else ""),
                "picked": step == rl_start.get("step"),
            }
        )
    return rows


def _reasoning_cell(
    result: Mapping[str, Any] | None, series: Mapping[str, Mapping[int, float]], loss_name: str | None, step: int
) -> str | None:
    """Thinking / answer tokens, unfinished thoughts and the held-out loss by token class at `step`, when measured."""
    parts = []
    reasoning = (result or {}).get("reasoning")
    if reasoning and reasoning.get("seen"):
        parts.append(
            f"{reasoning['mean_thinking_tokens']:.0f} / {reasoning['mean_answer_tokens']:.0f} tokens, "
            f"{reasoning['unfinished_thought_rate']:.0%} unfinished"
        )
    if loss_name:
        dataset = parse_name(loss_name).dataset
        think = series.get(heldout_name(dataset, "loss_thinking"), {}).get(step)
        answer = series.get(heldout_name(dataset, "loss_answer"), {}).get(step)
        if think is not None and answer is not None:
            parts.append(f"loss {think:.3f} / {answer:.3f}")
    return "; ".join(parts) or None


def _plot_band(ax, by_step: Mapping[int, Mapping], k: int, label: str, color: str) -> None:
    points = [(s, iv) for s, r in sorted(by_step.items()) if s > 0 and (iv := _interval(r, k)) is not None]
    if points:
        steps = [s for s, _ in points]
        ax.plot(steps, [iv[0] for _, iv in points], "o-", ms=3, color=color, label=label)
        ax.fill_between(steps, [iv[1] for _, iv in points], [iv[2] for _, iv in points], color=color, alpha=0.2)
    base = _interval(by_step.get(0), k)
    if base is not None:
        ax.axhline(base[0], color=color, ls=":", lw=1.5, label=f"{label} at step 0 (before SFT)")


def render_report(output_dir: str) -> tuple[str, str]:
    """Write report.png and report.html under `<output_dir>/sftrl/`; return their paths."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _load(output_dir)
    series, flags, results, rl_start = data["series"], data["flags"], data["results"], data["rl_start"]
    passk_set, large_k = _watched(data)
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
    for name, metric in sorted(parsed.items(), key=lambda item: item[1].dataset or ""):
        if metric.group != "heldout" or metric.field not in ("loss", "gap", "loss_thinking", "loss_answer"):
            continue
        points = series[name]
        steps = [s for s in sorted(points) if s > 0]
        ax = ax_gap if metric.field == "gap" else ax_loss
        style, label = (
            ("o-", metric.dataset)
            if metric.field in ("loss", "gap")
            else (
                "--" if metric.field == "loss_thinking" else ":",
                f"{metric.dataset}, {metric.field[5:]} tokens",
            )
        )
        (line,) = ax.plot(steps, [points[s] for s in steps], style, ms=3, label=label)
        if 0 in points and metric.field == "loss":
            ax.axhline(points[0], color=line.get_color(), ls=":", lw=1.5, label=f"{metric.dataset} at step 0")
    if passk_set:
        by_step = results[passk_set]
        _plot_band(ax_passk, by_step, 1, f"{passk_set} pass@1", "tab:blue")
        if large_k and large_k != 1:
            _plot_band(ax_passk, by_step, large_k, f"{passk_set} pass@{large_k}", "tab:orange")
    ax_loss.set(title="held-out loss vs step (token-weighted NLL)", xlabel="step", ylabel="loss")
    ax_passk.set(
        title="pass@k vs step (bands: 95 % bootstrap intervals over problems)",
        xlabel="step",
        ylabel="pass@k",
        ylim=(-0.02, 1.02),
    )
    ax_gap.set(title="held-out minus training loss", xlabel="step", ylabel="gap")
    for ax in (ax_loss, ax_passk, ax_gap):
        mark(ax)
        if ax.lines:
            ax.legend(fontsize=7)
    cmap = plt.get_cmap("viridis")
    for name, by_step in results.items():
        steps = sorted(by_step)
        for i, step in enumerate(steps):
            ks = sorted({int(k) for k in by_step[step]["pass_at_k"]} | {int(k) for k in by_step[step]["extrapolated"]})
            points = [(k, iv) for k in ks if (iv := _interval(by_step[step], k)) is not None]
            if not points:
                continue
            xs = [k for k, _ in points]
            color = "black" if step == 0 else cmap(i / max(1, len(steps) - 1))
            label = f"{name} step 0 (before SFT)" if step == 0 else f"{name} step {step}"
            line = "--" if step == 0 else "-"
            ax_curve.plot(xs, [iv[0] for _, iv in points], marker="o", ms=3, ls=line, color=color, label=label)
            ax_curve.fill_between(xs, [iv[1] for _, iv in points], [iv[2] for _, iv in points], alpha=0.12, color=color)
    ax_curve.set(title="pass@k vs k per checkpoint (95 % bands)", xlabel="k", ylabel="pass@k", xscale="log")
    measured_ks = sorted({x for line in ax_curve.lines for x in line.get_xdata()})
    if measured_ks:  # tick the ks measured, written as integers (a log axis alone writes 2x10^0, 3x10^0)
        ax_curve.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(measured_ks))
        ax_curve.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax_curve.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax_curve.set_ylim(-0.02, 1.02)
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
    with open(page_path, "w", encoding="utf-8") as f:
        f.write(_page(output_dir, data, png, large_k))
    return png, page_path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, tuple):
        return f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _page(output_dir: str, data: Mapping[str, Any], png: str, large_k: int | None) -> str:
    rl_start, flags = data["rl_start"], data["flags"]
    with open(png, "rb") as f:
        encoded = base64.b64encode(f.read()).decode()
    start = (
        f"<p><b>Pick for RL:</b> step {rl_start['step']} &mdash; <code>{html.escape(rl_start['path'])}</code><br>"
        f"<b>Why:</b> {html.escape(rl_start['why'])}<br><small>score = {html.escape(rl_start['score_formula'])}"
        "</small></p>"
        if rl_start
        else "<p>No RL-start checkpoint chosen (no RLReadinessCallback, or no checkpoint saved).</p>"
    )
    k_label = f"pass@{large_k}" if large_k else "pass@large-k"
    rows = candidate_rows(data)
    thinking = any(row["reasoning"] for row in rows)
    head = ["step", "held-out loss", "pass@1 [95 % CI]", f"{k_label} [95 % CI]", "readiness score", "flags", "pick"]
    if thinking:
        head.insert(4, "thinking / answer: tokens, unfinished; held-out loss")
    body = "".join(
        f"<tr{' style=background:#dfd' if row['picked'] else ''}><td>{row['step']}</td>"
        f"<td>{_fmt(row['heldout_loss'], 4)}</td><td>{_fmt(row['pass@1'])}</td>"
        f"<td>{_fmt(row.get(k_label) if large_k else None)}</td>"
        + (f"<td>{_fmt(row['reasoning'])}</td>" if thinking else "")
        + f"<td>{_fmt(row['score'])}</td>"
        f"<td>{html.escape(row['flags'])}</td><td>{'&#10004; RL start' if row['picked'] else ''}</td></tr>"
        for row in rows
    )
    candidates = (
        "<h2>Candidates</h2><table border=1 cellpadding=4><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + f"</tr>{body or f'<tr><td colspan={len(head)}>no saved checkpoint measured</td></tr>'}</table>"
        "<p><small>Intervals: percentile bootstrap over problems (measured k) or the beta-binomial fit's "
        "bootstrap (k above the samples per problem), as each measurement's JSON records. Flags: those that "
        "began at or before the step.</small></p>"
    )
    flag_rows = "".join(
        f"<tr><td>{f['step']}</td><td>{html.escape(f['name'].rsplit('/', 1)[1])}</td><td>{f['began_step']}</td>"
        f"<td>{html.escape(f.get('detail', ''))}</td></tr>"
        for f in flags
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>sftrl report</title>"
        f"<style>{_STYLE}</style><body style='font-family:sans-serif;max-width:1200px'>"
        f"<h1>sftrl report: {html.escape(os.path.abspath(output_dir))}</h1>{start}{candidates}"
        f"<img alt='sftrl report' style='width:100%' src='data:image/png;base64,{encoded}'>"
        "<h2>Flags</h2><table border=1 cellpadding=4><tr><th>confirmed at</th><th>flag</th><th>began at</th>"
        f"<th>detail</th></tr>{flag_rows or '<tr><td colspan=4>none</td></tr>'}</table>"
        f"{_failures_html(data['failures'])}"
        f"{_completions_html(data)}</body>"
    )


def _failures_html(failures: Sequence[Mapping[str, Any]]) -> str:
    """The monitors' failures (each also an event in metrics.jsonl and the trackers): none means no section."""
    if not failures:
        return ""
    cells = [
        (f["step"], f.get("callback", ""), f.get("sampler", ""), f.get("error", f.get("detail"))) for f in failures
    ]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in cells)
    return (
        f"<h2>Failures ({len(failures)})</h2><p>Training went on; these measurements or steps are missing from the "
        "figures above.</p><table border=1 cellpadding=4><tr><th>step</th><th>callback</th><th>sampler</th>"
        f"<th>error</th></tr>{rows}</table>"
    )


# Samples: the prompt's turns apart from the completion, both wrapped (a completion can be one long line).
_STYLE = (
    ".sample{border:1px solid #ccc;margin:8px 0;padding:6px}.verdict{font-size:90%;margin-bottom:4px}"
    ".prompt{background:#f4f4f4;padding:4px}.turn{white-space:pre-wrap;overflow-wrap:anywhere}"
    ".role{font-weight:bold;margin-right:6px}.role:after{content:':'}"
    ".completion{white-space:pre-wrap;overflow-wrap:anywhere;font-family:monospace;padding:4px;"
    "border-left:3px solid #69c;margin-top:4px}"
)


def _completions_html(data: Mapping[str, Any], per_checkpoint: int = 2) -> str:
    parts = []
    for name, by_step in data["results"].items():
        for step, result in sorted(by_step.items()):
            shown = []
            reasoning = result.get("reasoning")
            for example in result.get("examples", []):
                for c in map(completion_record, example["completions"][:1]):
                    verdict = {True: "&#10004; correct", False: "&#10008; wrong", None: "not recorded"}[c["correct"]]
                    details = [verdict, f"expected <b>{html.escape(str(example['answer']))}</b>"]
                    if c.get("tokens") is not None:
                        details.append(f"{c['tokens']} tokens" + (", cut at max_new_tokens" if c["truncated"] else ""))
                    if c.get("unfinished"):
                        details.append("ended inside a thought: no answer")
                    turns = "".join(
                        f"<div class=turn><span class=role>{html.escape(role)}</span>{html.escape(text)}</div>"
                        if role
                        else f"<div class=turn>{html.escape(text)}</div>"
                        for role, text in prompt_turns(example["prompt"])
                    )
                    thinking, answer = split_thinking(c, reasoning)
                    body = html.escape(answer) if answer is not None else ""
                    if thinking:  # collapsed: the answer is what was graded
                        size = f"{c['thinking_tokens']} tokens" if c.get("thinking_tokens") is not None else "thinking"
                        body = f"<details><summary>thinking ({size})</summary>{html.escape(thinking)}</details>{body}"
                    shown.append(
                        f"<div class=sample><div class=verdict>{' &middot; '.join(details)}</div>"
                        f"<div class=prompt>{turns}</div><div class=completion>{body}</div></div>"
                    )
                if len(shown) >= per_checkpoint:
                    break
            if shown:
                parts.append(f"<h3>{html.escape(name)}, step {step}</h3>{''.join(shown)}")
    if not parts:
        return ""
    return "<h2>Sampled completions (the first of the first problems, per measurement)</h2>" + "".join(parts)
