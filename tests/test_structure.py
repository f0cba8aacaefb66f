"""The package's shape: no import cycles (imports inside functions count), and the verbs that need no model
import no torch."""

import ast
import importlib
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "sftrl_callbacks")


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (top level or inside functions)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import x` imports the module x, not the package
                    submodule = f"{target}.{alias.name}"
                    deps.add(submodule if submodule in modules else target)
        graph[module] = {d for d in deps if d in modules and d != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep, [*path, dep])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "sftrl_callbacks.measure" in graph["sftrl_callbacks.background"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_fit_and_report_do_not_import_torch(tmp_path):
    table = tmp_path / "runs.csv"
    table.write_text(
        "name,signal,post_rl_pass@1\n" + "".join(f"r{i},{i},{i * 0.1 + (i % 2) * 0.03}\n" for i in range(6))
    )
    run = tmp_path / "run" / "sftrl"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 10, "name": "sftrl/heldout/heldout/loss", "value": 1.0}\n')
    code = (
        "import sys\n"
        "from sftrl_callbacks.cli import main\n"
        f"assert main(['fit', {str(table)!r}]) == 0\n"
        f"assert main(['report', {str(tmp_path / 'run')!r}]) == 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_what_every_sampler_and_verifier_shares_imports_no_torch():
    """A sampler of one's own (an HTTP client, another engine) builds on these without pulling in torch."""
    code = (
        "import sys\n"
        "import sftrl_callbacks.contracts, sftrl_callbacks.prompts, sftrl_callbacks.verifiers\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_configuration_reference_is_current():
    from sftrl_callbacks.options import reference_page

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    with open(path, encoding="utf-8") as f:
        assert f.read() == reference_page(), "stale: python -m sftrl_callbacks.options > docs/configuration.md"


def test_eval_flags_cover_every_measurement_field_but_the_skipped_one():
    import argparse
    import dataclasses

    import pytest

    from sftrl_callbacks.measure import PassAtKConfig
    from sftrl_callbacks.options import add_config_flags, config_from_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser, PassAtKConfig, skip=("gather_parameters",))
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    assert flags == {f.name for f in dataclasses.fields(PassAtKConfig)} - {"gather_parameters"}
    config = config_from_flags(
        parser.parse_args(["--top-k", "5", "--stop-strings", "a", "b"]), PassAtKConfig, skip=("gather_parameters",)
    )
    assert config.top_k == 5 and config.stop_strings == ["a", "b"] and config.gather_parameters is True
    with pytest.raises(ValueError, match="no field"):
        add_config_flags(argparse.ArgumentParser(), PassAtKConfig, skip=("gather_parameter",))


def test_report_to_entries_without_a_sink_are_named_in_one_warning(caplog):
    import logging
    from types import SimpleNamespace

    from sftrl_callbacks.trackers import tracker_sinks

    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        sinks = tracker_sinks(SimpleNamespace(report_to=["comet_ml", "neptune"]))
    assert sinks == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "no sink for 'comet_ml'" in lines[0] and "no sink for 'neptune'" in lines[1]
    assert all("metrics.jsonl" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        tracker_sinks(SimpleNamespace(report_to="none"))
    assert not caplog.records


def test_the_public_names_users_need_are_exported():
    import sftrl_callbacks
    from sftrl_callbacks import _WHERE

    assert {"Completion", "Table", "Image", "register_verifier", "load_result", "Sampler", "MetricSink"} <= set(
        sftrl_callbacks.__all__
    )
    for name in sftrl_callbacks.__all__:  # each one imports, and is its canonical module's own object
        value = getattr(sftrl_callbacks, name)
        assert callable(value) and value is getattr(importlib.import_module(f"sftrl_callbacks.{_WHERE[name]}"), name)
    assert not [n for n in sftrl_callbacks.__all__ if n.endswith("Sink") and n not in ("JsonlSink", "MetricSink")]
