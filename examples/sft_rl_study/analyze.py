"""The study's answer from its results files (numpy / scipy / matplotlib; no torch).

    python examples/sft_rl_study/analyze.py [results_dir]

Writes into the results folder:
  results.jsonl  one row per candidate checkpoint: the SFT-time signals and the post-RL target
                 (mean over RL seeds), the table `sftrl fit` reads;
  tables.md      the pilot figures, the fits, the matched pairs and the per-run decision, with intervals;
  study.png      per SFT run: the signals along the run, post-RL pass@1 of every checkpoint, the pick.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import Counter, defaultdict

import numpy as np

from sftrl_callbacks.predict import fit_table

RESAMPLES = 2000
MATCH = 0.03  # candidates whose post-SFT pass@1 differ by at most this are "matched"
WEAK = 0.05  # a candidate below this post-SFT pass@1 is "weak": RL barely moves it here


def read_lines(path: str) -> list[dict]:
    """Rows of a results file; a line torn by a killed run is skipped (the study redoes that job)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def load(out: str) -> tuple[list[dict], list[dict], dict[str, list[float]]]:
    """(SFT runs, candidate rows, post-RL pass@1 per RL seed by candidate id), for the settings most rows share."""
    runs = read_lines(os.path.join(out, "sft.jsonl"))
    settings = Counter(r["settings"] for r in runs).most_common(1)[0][0]
    runs = [r for r in runs if r["settings"] == settings]
    rl_path = os.path.join(out, "rl.jsonl")
    rl = [r for r in read_lines(rl_path) if r["settings"] == settings] if os.path.exists(rl_path) else []
    by_id: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rl:
        by_id[r["id"]][r["rl_seed"]] = r
    k = json.loads(settings)["passk_n"]
    candidates = []
    for run in runs:
        for c in run["checkpoints"]:
            seeds = by_id.get(c["id"], {})
            post = [seeds[s]["post_rl_pass@1"] for s in sorted(seeds)]
            candidates.append(
                {
                    "name": c["id"],
                    "run": f"{run['regime']}-s{run['sft_seed']}",
                    "regime": run["regime"],
                    "sft_seed": run["sft_seed"],
                    "step": c["step"],
                    "epochs": c["epochs"],
                    "pass@1": c["pass@1"],
                    "pass@8": c["pass@8"],
                    f"pass@{k}": c[f"pass@{k}"],
                    "heldout_loss": c["heldout_loss"],
                    "readiness_score": c["readiness_score"],
                    "rl_start": c["rl_start"],
                    "last": c["last"],
                    "post_rl_pass@1": float(np.mean(post)) if post else None,
                    "rl_gain": float(np.mean(post)) - c["pass@1"] if post else None,
                    "post_rl_by_seed": post,
                    "post_rl_se": [seeds[s]["post_rl_se"] for s in sorted(seeds)],
                    "rl_seconds": [seeds[s]["seconds"] for s in sorted(seeds)],
                    "rl_rewards": [seeds[s]["rewards"] for s in sorted(seeds)],
                }
            )
    return runs, candidates, {c["name"]: c["post_rl_by_seed"] for c in candidates}


def ci95(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def fmt_ci(value: float, interval: tuple[float, float], digits: int = 3) -> str:
    def signed(x: float) -> str:
        text = f"{x:+.{digits}f}"
        return text if float(text) != 0 else f"{0:.{digits}f}"  # no "-0.000"

    return f"{signed(value)} [{signed(interval[0])}, {signed(interval[1])}]"


# -- the pilot: is the RL effect above its noise, and how much does the SFT seed move things? --------
def noise_table(candidates: list[dict]) -> list[str]:
    done = [c for c in candidates if len(c["post_rl_by_seed"]) >= 2]
    lines = ["| quantity | median | mean | max | candidates |", "|---|---|---|---|---|"]
    if done:
        gain = [c["rl_gain"] for c in done]
        spread = [max(c["post_rl_by_seed"]) - min(c["post_rl_by_seed"]) for c in done]
        se = [float(np.mean(c["post_rl_se"])) for c in done]
        above = sum(g > s for g, s in zip(gain, spread))  # a loss, or a gain inside the seed noise, is no RL effect
        lines += [
            f"| RL gain (post-RL minus post-SFT pass@1, mean over RL seeds) | {np.median(gain):+.3f} | "
            f"{np.mean(gain):+.3f} | {np.max(gain):+.3f} | {len(done)} |",
            f"| RL seed spread (max - min post-RL pass@1 over RL seeds) | {np.median(spread):.3f} | "
            f"{np.mean(spread):.3f} | {np.max(spread):.3f} | {len(done)} |",
            f"| standard error of one post-RL pass@1 (sampling only) | {np.median(se):.4f} | {np.mean(se):.4f} | "
            f"{np.max(se):.4f} | {len(done)} |",
            f"| candidates RL raised by more than their own RL seed spread | {above} of {len(done)} | | | "
            f"{len(done)} |",
        ]
    pairs = defaultdict(dict)
    for c in candidates:
        pairs[(c["regime"], c["step"])][c["sft_seed"]] = c
    k = max(int(key[5:]) for key in candidates[0] if key.startswith("pass@"))
    # Same regime and step, two SFT seeds; pairs where neither checkpoint solved anything say nothing.
    twins = [
        tuple(p.values())[:2] for p in pairs.values() if len(p) >= 2 and any(c[f"pass@{k}"] > 0 for c in p.values())
    ]
    sft_spread = [abs(a["pass@1"] - b["pass@1"]) for a, b in twins]
    rl_sft_spread = [
        abs(a["post_rl_pass@1"] - b["post_rl_pass@1"])
        for a, b in twins
        if a["post_rl_pass@1"] is not None and b["post_rl_pass@1"] is not None
    ]
    if sft_spread:
        lines.append(
            f"| SFT seed spread of post-SFT pass@1 (same regime and step) | {np.median(sft_spread):.3f} | "
            f"{np.mean(sft_spread):.3f} | {np.max(sft_spread):.3f} | {len(sft_spread)} pairs |"
        )
    if rl_sft_spread:
        lines.append(
            f"| SFT seed spread of post-RL pass@1 (same regime and step) | {np.median(rl_sft_spread):.3f} | "
            f"{np.mean(rl_sft_spread):.3f} | {np.max(rl_sft_spread):.3f} | {len(rl_sft_spread)} pairs |"
        )
    return lines


def times_table(runs: list[dict], candidates: list[dict]) -> list[str]:
    """Minutes per job, from the `seconds` each results line records (wall time of that job)."""
    lines = ["| jobs | count | minutes each (min-max) | job-minutes |", "|---|---|---|---|"]
    for label, seconds in (
        ("SFT runs, with their pass@k measurements", [r["seconds"] for r in runs]),
        ("GRPO runs, with their post-RL evaluation", [s for c in candidates for s in c["rl_seconds"]]),
    ):
        if seconds:
            minutes = np.asarray(seconds) / 60
            span = f"{minutes.min():.1f}-{minutes.max():.1f}"
            lines.append(f"| {label} | {len(minutes)} | {span} | {minutes.sum():.0f} |")
    return lines


# -- the fits over all candidates and among matched ones -------------------------------------------
def fits_table(candidates: list[dict], signals: list[str], target: str = "post_rl_pass@1") -> list[str]:
    rows = [c for c in candidates if c[target] is not None]
    report = fit_table(rows, target, signals=signals, resamples=RESAMPLES, loss_column="heldout_loss")
    lines = [
        f"{report.calibrated} candidates; 95 % percentile bootstrap over candidates ({RESAMPLES} resamples).",
        "",
        "| signal | R² [95 % CI] | Spearman [95 % CI] | LOO MAE | selection regret [95 % CI] | picks |",
        "|---|---|---|---|---|---|",
    ]
    for f in report.fits:
        lines.append(
            f"| {f.signal} | {f.r2:.3f} [{f.r2_ci[0]:.2f}, {f.r2_ci[1]:.2f}] | {f.spearman:.3f} "
            f"[{f.spearman_ci[0]:.2f}, {f.spearman_ci[1]:.2f}] | {f.loo_mae:.3f} | {f.regret:.3f} "
            f"[{f.regret_ci[0]:.3f}, {f.regret_ci[1]:.3f}] | {f.picked} |"
        )
    lines += [f"note: {n}" for n in report.notes]
    return lines


EARLIER = "earlier checkpoint"  # a baseline: of two candidates, the one saved at the earlier SFT step


def signal_prefers(signal: str, a: dict, b: dict) -> int:
    """+1 when the signal ranks a above b, -1 for b, 0 on a tie (lower loss is better; `step` prefers the later
    checkpoint, EARLIER the earlier one)."""
    if signal == EARLIER:
        return 0 if a["step"] == b["step"] else (1 if a["step"] < b["step"] else -1)
    x, y = a[signal], b[signal]
    if x is None or y is None or x == y:
        return 0
    better = x < y if signal == "heldout_loss" else x > y
    return 1 if better else -1


def matched_pairs(candidates: list[dict]) -> tuple[list[dict], list[tuple[int, int]]]:
    """(candidates with RL results, index pairs of those whose post-SFT pass@1 differ by at most MATCH)."""
    done = [c for c in candidates if c["post_rl_pass@1"] is not None]
    pairs = [
        (i, j)
        for i, j in itertools.combinations(range(len(done)), 2)
        if abs(done[i]["pass@1"] - done[j]["pass@1"]) <= MATCH
    ]
    return done, pairs


def pair_outcomes(signal: str, done: list[dict], pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: whether the signal decides it, and its win (1, 1/2 on equal post-RL, 0; nan when undecided)."""
    decided, wins = np.zeros(len(pairs), bool), np.full(len(pairs), np.nan)
    for p, (i, j) in enumerate(pairs):
        pick = signal_prefers(signal, done[i], done[j])
        if pick:
            chosen, other = (done[i], done[j]) if pick > 0 else (done[j], done[i])
            x, y = chosen["post_rl_pass@1"], other["post_rl_pass@1"]
            decided[p], wins[p] = True, 0.5 if x == y else float(x > y)
    return decided, wins


def candidate_bootstrap(done, pairs, subset, decided, wins, rng) -> tuple[float, tuple[float, float], int]:
    """Agreement over the pairs in `subset` and its 95 % interval from resampling *candidates*: each resample
    draws the candidates with replacement and weighs a pair by how often both of its candidates were drawn
    (pairs share candidates, so resampling pairs would understate the spread)."""
    idx = np.array([p for p in subset if decided[p]], dtype=int)
    if idx.size == 0:
        return float("nan"), (float("nan"), float("nan")), 0
    a = np.array([pairs[p][0] for p in idx])
    b = np.array([pairs[p][1] for p in idx])
    w = wins[idx]
    counts = rng.multinomial(len(done), np.full(len(done), 1 / len(done)), size=RESAMPLES)
    weight = counts[:, a] * counts[:, b]
    total = weight.sum(1)
    boot = (weight @ w)[total > 0] / total[total > 0]
    return float(w.mean()), ci95(boot), int(idx.size)


def matched_table(candidates: list[dict], signals: list[str], rng: np.random.Generator) -> list[str]:
    """Pairs of candidates with post-SFT pass@1 within MATCH: does each signal pick the better one after RL,
    at the same SFT step and across steps, beside the "earlier checkpoint" and "later checkpoint" baselines?"""
    from scipy.stats import binomtest

    done, pairs = matched_pairs(candidates)
    same = [p for p, (i, j) in enumerate(pairs) if done[i]["step"] == done[j]["step"]]
    other = [p for p, (i, j) in enumerate(pairs) if done[i]["step"] != done[j]["step"]]
    involved = Counter(x for pair in pairs for x in pair)
    lines = [
        f"{len(pairs)} pairs of candidates whose post-SFT pass@1 differ by <= {MATCH} (among {len(done)} candidates "
        f"with RL results): {len(same)} at the same SFT step, {len(other)} at different steps; "
        f"{sum(done[i]['run'] == done[j]['run'] for i, j in pairs)} within one SFT run; {len(involved)} candidates "
        f"take part, the most in {max(involved.values(), default=0)} pairs; "
        f"{sum(max(done[i]['pass@1'], done[j]['pass@1']) < WEAK for i, j in pairs)} pairs are between weak "
        f"candidates (both post-SFT pass@1 < {WEAK}).",
        "Agreement: share of decided pairs where the signal's pick has the higher post-RL pass@1 (equal post-RL "
        "counts 1/2; 0.5 = chance). 95 % CI: percentile bootstrap over *candidates* "
        f"({RESAMPLES} resamples; a pair counts as often as both its candidates are drawn). 'later checkpoint' is "
        "the `step` signal; 'earlier checkpoint' prefers the earlier step. Neither decides pairs at the same step. "
        "Where every decided pair agrees (or none does) the bootstrap collapses to a point; such a cell gives the "
        "exact binomial (Clopper-Pearson) interval over its n pairs instead, marked 'exact' (it takes the pairs as "
        "independent, which they are not: they share candidates).",
        "",
        "| signal | all pairs: decided, agreement [95 % CI] | same step | different steps |",
        "|---|---|---|---|",
    ]
    if not pairs:
        return lines
    outcomes = {}
    for signal in [*signals, EARLIER]:
        decided, wins = pair_outcomes(signal, done, pairs)
        outcomes[signal] = (decided, wins)
        cells = []
        for subset in (range(len(pairs)), same, other):
            value, interval, n = candidate_bootstrap(done, pairs, list(subset), decided, wins, rng)
            exact = ""
            if n and value in (0.0, 1.0):  # the bootstrap collapses to a point: give the exact binomial interval
                ci = binomtest(int(value * n), n).proportion_ci(confidence_level=0.95, method="exact")
                interval, exact = (ci.low, ci.high), " exact"
            cells.append(f"{n}, {value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]{exact}" if n else "0, -")
        name = "later checkpoint (step)" if signal == "step" else signal
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where two signals pick differently (both decide, opposite picks): how often each was right, and a two-sided "
        "sign test (exact binomial, p = 0.5). Pairs share candidates, so the p-values are optimistic; the last "
        "column is A's agreement minus B's over the pairs both decide, its 95 % CI from resampling candidates as "
        "above.",
        "",
        "| signal A vs signal B | pairs where they disagree | A right | B right | sign test p | A minus B [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    names = [*signals, EARLIER]
    for x, y in itertools.combinations(names, 2):
        (dx, wx), (dy, wy) = outcomes[x], outcomes[y]
        both = dx & dy
        disagree = [p for p in np.flatnonzero(both) if wx[p] != wy[p] and wx[p] != 0.5]
        if not disagree:
            continue
        right_x = int(sum(wx[p] == 1.0 for p in disagree))
        n = len(disagree)
        p_value = binomtest(right_x, n, 0.5).pvalue
        value, interval, _ = candidate_bootstrap(done, pairs, np.flatnonzero(both), both, wx - wy, rng)
        lines.append(f"| {x} vs {y} | {n} | {right_x} | {n - right_x} | {p_value:.2f} | {fmt_ci(value, interval, 2)} |")
    return lines


# -- per SFT run: the library's pick against the last and the best-by-pass@1 checkpoint -----------------
LIBRARY = "rl_start.json (library)"


def rules(k: int) -> dict:
    """Ways to pick one checkpoint of an SFT run; ties go to the later step."""
    return {
        LIBRARY: lambda cps: next(c for c in cps if c["rl_start"]),
        "last checkpoint": lambda cps: max(cps, key=lambda c: c["step"]),
        "one save before the last": lambda cps: sorted(cps, key=lambda c: c["step"])[-2 if len(cps) > 1 else -1],
        "best post-SFT pass@1": lambda cps: max(cps, key=lambda c: (c["pass@1"], c["step"])),
        "lowest held-out loss": lambda cps: min(cps, key=lambda c: (c["heldout_loss"], -c["step"])),
        f"best pass@{k}": lambda cps: max(cps, key=lambda c: (c[f"pass@{k}"], c["step"])),
    }


def decision_table(candidates: list[dict], k: int, rng: np.random.Generator) -> list[str]:
    """Per SFT run, post-RL pass@1 of what each rule picks. A rule is scored over the runs where its pick, the
    library's and the last checkpoint all have RL results (checkpoints no sample solved were not sent to RL)."""
    by_run = defaultdict(list)
    for c in candidates:
        by_run[c["run"]].append(c)
    picks = {name: {rule: pick(cps) for rule, pick in rules(k).items()} for name, cps in sorted(by_run.items())}
    # The oracle is the best checkpoint of the run after RL, among those sent to RL.
    runs = {name: [c for c in by_run[name] if c["post_rl_by_seed"]] for name in picks}
    runs = {name: cps for name, cps in runs.items() if cps}

    def has_rl(name: str, *rule_names: str) -> bool:
        return all(picks[name][r]["post_rl_by_seed"] for r in rule_names)

    lines = [
        "Post-RL pass@1 (mean over RL seeds) of the checkpoint each rule picks, per SFT run ('-': that checkpoint "
        "was not sent to RL); 'oracle' is the run's best checkpoint after RL among those sent to RL.",
        "",
        "| SFT run | " + " | ".join(rules(k)) + " | oracle |",
        "|---|" + "---|" * (len(rules(k)) + 1),
    ]
    if not runs:
        return lines
    for name, cps in runs.items():
        best = max(cps, key=lambda c: c["post_rl_pass@1"])
        cells = [
            f"{p['post_rl_pass@1']:.4f} (@{p['step']})" if p["post_rl_by_seed"] else f"- (@{p['step']})"
            for p in picks[name].values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best['post_rl_pass@1']:.4f} (@{best['step']}) |")

    def mean_of_seeds(c):
        return float(np.mean(c["post_rl_by_seed"]))

    def per_run(names: list[str], rule: str, draw) -> np.ndarray:
        """Rows per run: library pick minus rule, the rule's regret vs the oracle, rule minus last checkpoint."""
        out = []
        for name in names:
            own = draw(picks[name][rule])
            out.append(
                (
                    draw(picks[name][LIBRARY]) - own,
                    max(draw(c) for c in runs[name]) - own,
                    own - draw(picks[name]["last checkpoint"]),
                )
            )
        return np.array(out)

    def tally(values: np.ndarray) -> str:
        return f"{sum(x > 0 for x in values)} / {sum(x == 0 for x in values)} / {sum(x < 0 for x in values)}"

    lines += [
        "",
        "Mean over the SFT runs where the rule's pick, the library's and the last checkpoint all have RL results (n): "
        "library pick minus rule, regret against the run's oracle, and rule minus last checkpoint, post-RL pass@1. "
        f"95 % CI: hierarchical percentile bootstrap ({RESAMPLES} resamples: SFT runs resampled, and within each "
        "run the RL seeds of every checkpoint; the oracle is re-chosen in each resample).",
        "",
        "| rule | runs (n) | library minus rule [95 % CI] | runs library better / tied / worse | "
        "regret vs oracle [95 % CI] | rule minus last checkpoint [95 % CI] | runs rule better / tied / worse than "
        "last |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in rules(k):
        names = [n for n in runs if has_rl(n, rule, LIBRARY, "last checkpoint")]
        if not names:
            lines.append(f"| {rule} | 0 | - | - | - | - | - |")
            continue
        boots = []
        for _ in range(RESAMPLES):
            drawn = [names[i] for i in rng.integers(0, len(names), len(names))]
            cache: dict[str, float] = {}

            def draw(c, cache=cache):
                if c["name"] not in cache:
                    seeds = c["post_rl_by_seed"]
                    cache[c["name"]] = float(np.mean(rng.choice(seeds, len(seeds))))
                return cache[c["name"]]

            boots.append(per_run(drawn, rule, draw).mean(0))
        observed = per_run(names, rule, mean_of_seeds)
        d, r, last = observed.mean(0)
        boots_d, boots_r, boots_l = np.array(boots).T
        same = rule == LIBRARY
        lines.append(
            f"| {rule} | {len(names)} | {'0 (same pick)' if same else fmt_ci(d, ci95(boots_d), 4)} | "
            f"{'-' if same else tally(observed[:, 0])} | {fmt_ci(r, ci95(boots_r), 4)} | "
            f"{fmt_ci(last, ci95(boots_l), 4)} | {tally(observed[:, 2])} |"
        )
    lines += [
        "",
        "Rule minus last checkpoint per SFT run (post-RL pass@1, mean over RL seeds, 6 decimals):",
        "",
    ]
    for rule in rules(k):
        names = [n for n in runs if has_rl(n, rule, LIBRARY, "last checkpoint")]
        differences = per_run(names, rule, mean_of_seeds)[:, 2] if names else []
        cells = ", ".join(f"{n} {d:+.6f}" for n, d in zip(names, differences))
        lines.append(f"- {rule}: {cells or '-'}")
    return lines


# -- where the held-out loss turns, and what RL could still gain there ------------------------------------
def turn_table(runs: list[dict], candidates: list[dict], k: int) -> list[str]:
    """Per SFT run: the held-out loss minimum and the flags, and pass@1 / pass@k at the checkpoints around it.
    A run tests early stopping when its loss turns before the last checkpoint while pass@k there is well above 0
    (RL can still gain)."""
    lines = [
        f"Per SFT run: the held-out loss minimum (step, value), the last value, the readiness flags, and post-SFT "
        f"pass@1 / pass@{k} at the saved checkpoints nearest the minimum and at the last. 'Turn with headroom': the "
        f"minimum lies before the last checkpoint and pass@{k} at the checkpoint nearest it is >= 0.1.",
        "",
        f"| SFT run | loss min (step) | last loss (step) | flags | nearest checkpoint: pass@1 / pass@{k} | "
        f"last checkpoint: pass@1 / pass@{k} | turn with headroom |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        name = f"{run['regime']}-s{run['sft_seed']}"
        history = [(s, v) for s, v in run["heldout_loss_history"] if s > 0]
        if not history:
            continue
        low_step, low = min(history, key=lambda sv: sv[1])
        last_step, last = history[-1]
        cps = sorted((c for c in candidates if c["run"] == name), key=lambda c: c["step"])
        if not cps:
            continue
        near = min(cps, key=lambda c: (abs(c["step"] - low_step), c["step"]))
        end = cps[-1]
        headroom = near["step"] < end["step"] and near[f"pass@{k}"] >= 0.1
        lines.append(
            f"| {name} | {low:.4f} ({low_step}) | {last:.4f} ({last_step}) | {', '.join(run['flags']) or '-'} | "
            f"@{near['step']}: {near['pass@1']:.3f} / {near[f'pass@{k}']:.3f} | "
            f"@{end['step']}: {end['pass@1']:.3f} / {end[f'pass@{k}']:.3f} | {'yes' if headroom else 'no'} |"
        )
    return lines


# -- plots --------------------------------------------------------------------------------------------
def plot(runs: list[dict], candidates: list[dict], k: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(dict.fromkeys(c["regime"] for c in candidates))  # regimes as run, the seeds side by side
    names = sorted({c["run"] for c in candidates}, key=lambda n: (order.index(n.rsplit("-s", 1)[0]), n))
    fig, axes = plt.subplots(3, len(names), figsize=(3.6 * len(names), 9.4), squeeze=False)
    history = {f"{r['regime']}-s{r['sft_seed']}": r for r in runs}
    for col, name in enumerate(names):
        cps = sorted((c for c in candidates if c["run"] == name), key=lambda c: c["step"])
        steps = [c["step"] for c in cps]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(steps, [c["pass@1"] for c in cps], "o-", label="post-SFT pass@1")
        top.plot(steps, [c[f"pass@{k}"] for c in cps], "s-", label=f"post-SFT pass@{k}")
        done = [c for c in cps if c["post_rl_by_seed"]]
        if done:
            means = [c["post_rl_pass@1"] for c in done]
            lo = [m - min(c["post_rl_by_seed"]) for m, c in zip(means, done)]
            hi = [max(c["post_rl_by_seed"]) - m for m, c in zip(means, done)]
            top.errorbar([c["step"] for c in done], means, yerr=[lo, hi], fmt="^-", label="post-RL pass@1 (seed range)")
        pick = next((c for c in cps if c["rl_start"]), None)
        if pick:
            top.axvline(pick["step"], color="green", ls="--", lw=1)
        top.set(title=name, ylim=(0, 1))
        if col == 0:
            top.legend(fontsize=7)
        loss = history[name]["heldout_loss_history"]
        bottom.plot([s for s, _ in loss], [v for _, v in loss], color="tab:red", label="held-out loss")
        train = history[name]["train_loss_history"]
        bottom.plot([s for s, _ in train], [v for _, v in train], color="grey", lw=1, label="train loss")
        if pick:
            bottom.axvline(pick["step"], color="green", ls="--", lw=1, label="rl_start.json")
        bottom.set(xlabel="SFT step", yscale="log")
        if col == 0:
            bottom.legend(fontsize=7)
        rl = axes[2][col]
        for c, color in zip(done, ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
            for seed, curve in enumerate(c["rl_rewards"]):
                if curve:
                    label = f"GRPO from @{c['step']} (RL seeds: solid, dotted)" if seed == 0 else None
                    rl.plot(*zip(*curve), color=color, ls="-" if seed == 0 else ":", label=label)
        rl.set(xlabel="GRPO step", ylabel="mean reward", ylim=(0, 1))
        if done:
            rl.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    runs, candidates, _ = load(out)
    k = json.loads(runs[0]["settings"])["passk_n"]
    rng = np.random.default_rng(0)
    with open(os.path.join(out, "results.jsonl"), "w", encoding="utf-8") as f:
        for c in candidates:
            f.write(json.dumps(c) + "\n")
    signals = ["pass@1", f"pass@{k}", "heldout_loss", "readiness_score", "step"]
    lines = ["## Noise and effect sizes", "", *noise_table(candidates)]
    lines += [
        "",
        "## Candidates",
        "",
        "| candidate | epochs | pass@1 | pass@" + str(k) + " | held-out loss | "
        "readiness | post-RL pass@1 by RL seed | RL gain | RL seed spread | gain / spread |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in candidates:
        seeds = ", ".join(f"{v:.3f}" for v in c["post_rl_by_seed"]) or "-"
        gain = f"{c['rl_gain']:+.3f}" if c["rl_gain"] is not None else "-"
        spread, ratio = "-", "-"
        if len(c["post_rl_by_seed"]) >= 2:
            width = max(c["post_rl_by_seed"]) - min(c["post_rl_by_seed"])
            spread = f"{width:.3f}"
            ratio = f"{c['rl_gain'] / width:.1f}x" if width > 0 else "-"
        mark = " *" if c["rl_start"] else ""
        lines.append(
            f"| {c['name']}{mark} | {c['epochs']} | {c['pass@1']:.3f} | {c[f'pass@{k}']:.3f} | "
            f"{c['heldout_loss']:.4f} | {c['readiness_score']:.3f} | {seeds} | {gain} | {spread} | {ratio} |"
        )
    lines += ["", "## Held-out loss turns", "", *turn_table(runs, candidates, k)]
    if sum(c["post_rl_pass@1"] is not None for c in candidates) >= 3:
        lines += ["", "## Fits: target post-RL pass@1 (all candidates)", "", *fits_table(candidates, signals)]
        lines += ["", "## Fits: target RL gain", "", *fits_table(candidates, signals, target="rl_gain")]
        lines += ["", "## Matched on post-SFT pass@1", "", *matched_table(candidates, signals, rng)]
        lines += ["", "## Per SFT run: which checkpoint to take into RL", "", *decision_table(candidates, k, rng)]
    lines += ["", "## Job times", "", *times_table(runs, candidates)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "tables.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(runs, candidates, k, os.path.join(out, "study.png"))
    print(text)


if __name__ == "__main__":
    main()
