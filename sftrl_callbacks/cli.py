"""The `sftrl` command line: `sftrl demo | eval | fit | report`."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
import time

from . import layout
from .checkpoints import check_checkpoint, load_checkpoint, sampling_source
from .checks import first_line
from .options import add_config_flags, config_from_flags

logger = logging.getLogger("sftrl_callbacks")


def _demo(ns: argparse.Namespace) -> int:
    from .demo import demo_settings, machine_summary, run_demo

    report_to = None if ns.report_to is None else [t for t in ns.report_to.split(",") if t and t != "none"]
    result = run_demo(
        ns.output_dir, max_steps=ns.max_steps, seed=ns.seed, show_progress=not ns.quiet, report_to=report_to
    )
    print(f"\nMonitors: {demo_settings(ns.max_steps)}.")
    print("Held-out loss (token-weighted mean NLL on held-out SFT examples):")
    for step, loss in result.heldout_losses:
        print(f"  step {step:5d}  {loss:.4f}")
    if result.pass_at_k:
        print("Pass@k on held-out problems:")
        for step, curve in result.pass_at_k:
            print(f"  step {step:5d}  " + "  ".join(f"pass@{k} {v:.3f}" for k, v in curve.items() if k in (1, 8, 64)))
    acc = result.greedy_accuracy
    print("Greedy exact-match accuracy on held-out problems: " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))
    if result.rl_start:
        print(f"RL start: step {result.rl_start['step']} -> {result.rl_start['path']}\n  why: {result.rl_start['why']}")
    print(f"Metrics:  {result.metrics_path}   (one-page report: sftrl report {result.output_dir})")
    if result.wandb_dir:
        print(f"W&B run (offline): {result.wandb_dir}/wandb  (sync with `wandb sync <run dir>`)")
    share = result.callback_time_s / result.train_time_s
    print(
        f"Wall time {result.wall_time_s:.0f} s (training {result.train_time_s:.0f} s, of which the sftrl "
        f"callbacks {result.callback_time_s:.1f} s = {share:.1%}) on {machine_summary()}"
    )
    return 0


def _load_rows(spec: str):
    """`name=path` or `path` (JSONL / JSON / CSV / parquet) -> (name, Dataset)."""
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()  # a small local file: the bars would only bury the result and errors
    name, _, path = spec.rpartition("=")
    ext = os.path.splitext(path)[1].lstrip(".")
    kind = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
    if kind is None:
        raise ValueError(f"cannot read {path!r}: use .jsonl, .json, .csv or .parquet")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        rows = load_dataset(kind, data_files=path, split="train")
    except Exception as err:
        raise ValueError(f"{path}: not readable as {ext.upper()}: {first_line(err)}") from err
    return name or os.path.splitext(os.path.basename(path))[0], rows


class _EvalInputs:
    """Everything `sftrl eval` reads besides the checkpoints, checked once before any model is loaded."""

    def __init__(self, ns: argparse.Namespace) -> None:
        from . import toy  # noqa: F401  (registers the toy world's "toy-steps" verifier)
        from .contracts import PassAtKConfig, make_sampler
        from .heldout import check_columns
        from .measure import check_problems
        from .verifiers import GuardedVerifier, make_verifier, probe_verifier

        self.heldout = []
        for spec in ns.heldout or []:
            name, rows = _load_rows(spec)
            _in_file(spec, check_columns, rows, f"held-out {name!r}")
            self.heldout.append((name, rows))
        self.problems, self.config, self.verifier, self.sampler = [], None, None, None
        if ns.problems:
            self.config = config_from_flags(ns, PassAtKConfig, skip=EVAL_SKIPS)
            # one sampler for every checkpoint: vLLM's engine
            defaults = {"max_batch_rows": ns.max_batch_rows}
            self.sampler = make_sampler(self.config.sampler, self.config.sampler_options, defaults)
            verifier = make_verifier(ns.verifier, self.config.verifier_options, self.config.answer_column)
            self.verifier = GuardedVerifier(verifier, self.config.verifier_timeout_s)
            for spec in ns.problems:
                name, rows = _load_rows(spec)
                _in_file(spec, check_problems, rows, self.config, name)
                where = f"problem set {name!r}"
                used = rows.select(range(self.config.num_used(len(rows))))
                _in_file(spec, probe_verifier, self.verifier, rows[0], where, self.config.score_threshold, used)
                self.problems.append((name, rows))


def _in_file(spec: str, check, *args) -> None:
    """Run a check; its error names the file it is about."""
    try:
        check(*args)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{spec.rpartition('=')[2]}: {err}") from err


def evaluate_checkpoint(checkpoint: str, ns: argparse.Namespace, inputs: _EvalInputs | None = None) -> dict:
    """Held-out loss and pass@k of one saved checkpoint, through the callbacks' own code paths."""
    from .contracts import sampler_hook
    from .heldout import heldout_loss, prepare_examples
    from .io import write_json_atomic
    from .measure import measure_pass_at_k
    from .prompts import pad_token_id, prompts_that_change
    from .records import heldout_name
    from .verifiers.reasoning import ReasoningFormat

    inputs = inputs or _EvalInputs(ns)
    match = re.search(r"(\d+)$", os.path.normpath(checkpoint))  # checkpoint-<step>
    step = int(match[1]) if match else None
    model, tokenizer = None, None
    if inputs.heldout or not sampler_hook(inputs.sampler, "reads_checkpoint_folders"):
        model, tokenizer = load_checkpoint(checkpoint, ns.dtype)
    out = {"checkpoint": checkpoint, "step": step, "metrics": {}}
    reasoning = ReasoningFormat.from_delimiters(getattr(ns, "reasoning_delimiters", None))  # as HeldOutLossCallback
    for name, rows in inputs.heldout:
        examples = prepare_examples(
            rows, tokenizer, max_length=ns.max_length, name=f"held-out {name!r}", reasoning=reasoning
        )
        result = heldout_loss(model, examples, batch_size=ns.batch_size, pad_token_id=pad_token_id(tokenizer))
        out["metrics"][heldout_name(name, "loss")] = result.loss
        if result.thinking_loss is not None:
            out["metrics"][heldout_name(name, "loss_thinking")] = result.thinking_loss
            out["metrics"][heldout_name(name, "loss_answer")] = result.answer_loss
    if inputs.problems and model is None:  # a sampler that reads the folder itself (vLLM)
        model, tokenizer = sampling_source(inputs.sampler, checkpoint, ns.dtype)
    if inputs.problems:
        sampler_hook(inputs.sampler, "check_model")(model)
    for name, rows in inputs.problems:
        prompts = inputs.config.used_prompts(rows)
        changed = prompts_that_change(tokenizer, prompts)
        if changed:
            logger.warning(
                "sftrl eval: %s: the checkpoint's tokenizer (%s) does not give back %d of %d prompts of %r after "
                "encoding and decoding (e.g. %r -> %r), so the model is sampled on other text than in training; "
                "check that the tokenizer saved with the checkpoint loads back as the one the trainer used",
                checkpoint,
                type(tokenizer).__name__,
                len(changed),
                len(prompts),
                name,
                *changed[0],
            )
        result = measure_pass_at_k(model, tokenizer, rows, inputs.verifier, inputs.config, inputs.sampler, name, step)
        if result.completions is not None:
            result.write_completions(layout.eval_completions_path(checkpoint, name))
        result.save(layout.eval_passk_path(checkpoint, name))
        out["metrics"].update(result.metrics())
    write_json_atomic(layout.eval_path(checkpoint), out)
    return out


def _eval(ns: argparse.Namespace) -> int:
    if not ns.heldout and not ns.problems:
        raise ValueError("give --heldout and/or --problems (JSONL/CSV files, optionally name=path)")
    if not ns.checkpoints and not ns.watch:
        raise ValueError("give checkpoint folders, or --watch <output_dir>")
    if ns.watch and not os.path.isdir(ns.watch):
        raise FileNotFoundError(f"--watch {ns.watch}: no such folder")
    for path in ns.checkpoints:
        check_checkpoint(path)
    inputs = _EvalInputs(ns)
    done: set[str] = set()

    def run(paths: list[str]) -> None:
        for path in paths:
            result = evaluate_checkpoint(path, ns, inputs)
            done.add(os.path.abspath(path))
            print(json.dumps(result))

    run(list(ns.checkpoints))
    if ns.watch:
        idle_since = time.time()
        while time.time() - idle_since < ns.idle_timeout:
            found = sorted(
                (p for p in glob.glob(os.path.join(ns.watch, "checkpoint-*")) if os.path.abspath(p) not in done),
                key=lambda p: int(p.rsplit("-", 1)[1]),
            )
            # A checkpoint is complete once the trainer has written its trainer_state.json.
            ready = [p for p in found if os.path.exists(os.path.join(p, "trainer_state.json"))]
            if ready:
                run(ready)
                idle_since = time.time()
            else:
                time.sleep(ns.interval)
    return 0


def _fit(ns: argparse.Namespace) -> int:
    from .predict import fit_table, format_report, plot_report, read_table

    rows = read_table(ns.table)
    report = fit_table(rows, ns.target, ns.signals, id_column=ns.id_column, seed=ns.seed)
    print(format_report(report))
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=1)
        print(f"JSON: {ns.json}")
    if ns.plot:
        print(f"plot: {plot_report(report, rows, ns.plot)}")
    return 0


def _report(ns: argparse.Namespace) -> int:
    from .report import render_report

    png, page = render_report(ns.output_dir)
    print(f"report: {page}\nplot:   {png}")
    return 0


# `sftrl eval` takes every PassAtKConfig field as a flag but the one about sharded training, which a
# single-process eval never is.
EVAL_SKIPS = ("gather_parameters",)


def build_parser(with_eval_flags: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftrl", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", parents=[common], help="SFT of the toy model with the callbacks, offline, on a CPU.")
    demo.add_argument("--output-dir", default="sftrl_demo")
    demo.add_argument("--max-steps", type=int, default=400)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="No progress bars.")
    demo.add_argument(
        "--report-to",
        help="trackers, comma-separated (wandb, tensorboard, mlflow, trackio; 'none'), each offline under the "
        "output dir; default: wandb when installed",
    )
    demo.set_defaults(func=_demo)

    ev = sub.add_parser(
        "eval", parents=[common], help="Held-out loss and pass@k of saved checkpoints (same code as the callbacks)."
    )
    ev.add_argument("checkpoints", nargs="*", help="checkpoint directories")
    ev.add_argument("--watch", help="also evaluate new checkpoint-* folders of this output_dir as they appear")
    ev.add_argument("--interval", type=float, default=30.0, help="seconds between looks with --watch")
    ev.add_argument("--idle-timeout", type=float, default=3600.0, help="stop watching after this long with nothing new")
    ev.add_argument("--heldout", action="append", help="held-out SFT examples: [name=]path (repeatable)")
    ev.add_argument("--problems", action="append", help="problems with prompt/answer: [name=]path (repeatable)")
    ev.add_argument(
        "--verifier",
        default="answer",
        help="a registered verifier: answer | math-verify | toy-steps | ... (its options: --verifier-options)",
    )
    ev.add_argument("--max-length", type=int, default=1024, help="held-out examples: tokens kept (SFTConfig's)")
    ev.add_argument("--batch-size", type=int, default=32, help="held-out examples per forward")
    ev.add_argument(
        "--max-batch-rows",
        type=int,
        default=1024,
        help="sequences sampled together, for samplers that take max_batch_rows (HFSampler: memory only, each "
        "problem's samples are seeded by the problem); other options go in --sampler-options",
    )
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    if with_eval_flags:  # its flags are made only for the verb that uses them
        from .contracts import PassAtKConfig

        add_config_flags(ev, PassAtKConfig, skip=EVAL_SKIPS)
    ev.set_defaults(func=_eval)

    fit = sub.add_parser("fit", parents=[common], help="Fit post-RL predictors on a table of SFT candidates.")
    fit.add_argument("table", help="CSV or JSONL, one row per candidate")
    fit.add_argument("--target", default="post_rl_pass@1", help="column with the measured post-RL score")
    fit.add_argument("--signals", nargs="+", help="signal columns (default: every numeric column)")
    fit.add_argument("--id-column", default="name")
    fit.add_argument("--json", help="write the results as JSON here")
    fit.add_argument("--plot", help="write a PNG of each signal vs the target here")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(func=_fit)

    rep = sub.add_parser("report", parents=[common], help="Render a one-page HTML/PNG report of a run's output_dir.")
    rep.add_argument("output_dir")
    rep.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in args if not a.startswith("-")), None)
    ns = build_parser(with_eval_flags=verb == "eval").parse_args(args)
    try:
        return ns.func(ns)
    except Exception as err:  # user mistakes and failures alike: one line, the traceback with --debug
        if ns.debug:
            raise
        print(f"sftrl {ns.command}: error: {first_line(err)}  (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
