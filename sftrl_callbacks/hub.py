"""What the sftrl callbacks of one training run share: outputs, the record bus, and state across resume.

Callbacks are never handed the trainer, but every event hands them the run's `TrainerState`, one
object per `trainer.train()` call. `hub_for(args, state)` returns the `RunHub` of that object, so
the callbacks of one trainer find each other in any order, two trainers alive at once stay apart,
and a callback object given to a second trainer sees a new hub and starts clean.

Resume: when every member has handled a save, the hub writes `<checkpoint>/sftrl/monitor_state.json`
(each member's state and how many lines `metrics.jsonl` had). A run resumed from that checkpoint
restores each member and cuts `metrics.jsonl` back to those lines, so the records the killed run
wrote after the checkpoint are written again, once, by the resumed run.
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import layout
from .io import write_json_atomic
from .records import Record
from .sinks import FailureLog, Image, JsonlSink, Table, TrainerLogSink
from .trackers import tracker_sinks

logger = logging.getLogger("sftrl_callbacks")

Listener = Callable[[Any, Record], None]  # (publishing callback, record)

_HUBS: dict[int, RunHub] = {}


@dataclass(frozen=True)
class Source:
    """What a measuring callback logs, told to its run when it joins, so listeners need not look inside it."""

    group: str  # its metric-name group, `sftrl/<group>/...`: "heldout" or "passk"
    sets: tuple[str, ...]  # its set names; empty for held-out loss re-logged from the trainer's own eval
    ks: tuple[int, ...] = ()  # pass@k: the ks measured directly (not extrapolated)


def hub_for(args: Any, state: Any) -> RunHub:
    """The hub of the run that `state` (the trainer's `TrainerState`) belongs to; created on first use."""
    hub = _HUBS.get(id(state))
    if hub is None or hub.state_ref() is not state:
        hub = RunHub(args, state)
        _HUBS[id(state)] = hub
        weakref.finalize(state, _HUBS.pop, id(state), None)
    return hub


class RunHub:
    def __init__(self, args: Any, state: Any) -> None:
        self.state_ref = weakref.ref(state)
        self.output_dir = os.path.abspath(args.output_dir)
        self.is_main = bool(state.is_world_process_zero)
        self.failures = FailureLog()
        self.trainer_log = TrainerLogSink()
        self.trackers = tracker_sinks(args) if self.is_main else []  # one per tracker in report_to
        self.jsonl = JsonlSink(layout.metrics_path(self.output_dir)) if self.is_main else None
        self.members: dict[str, Any] = {}  # key -> callback
        self._sources: dict[str, Source] = {}  # key -> what that member measures
        self._listeners: list[Listener] = []
        self._saved: dict[int, set[str]] = {}
        self.restored: dict[str, dict] = {}
        self._guard("resume", "restoring the sftrl state", self._prepare_outputs, args, state)

    # -- members and records --------------------------------------------------------------------
    def join(self, callback: Any, label: str, source: Source | None = None) -> str:
        """Register a callback (and what it measures); returns its key, unique in this run (its restored state
        is `restored[key]`)."""
        key, i = label, 2
        while key in self.members:
            key, i = f"{label}#{i}", i + 1
        self.members[key] = callback
        if source is not None:
            self._sources[key] = source
        return key

    def sources(self) -> list[tuple[Any, Source]]:
        """(callback, what it measures) of every measuring member, in the order they joined."""
        return [(self.members[key], source) for key, source in self._sources.items()]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def notify(self, source: Any, record: Record) -> None:
        for listener in self._listeners:
            listener(source, record)

    # -- outputs -------------------------------------------------------------------------------
    def _guard(self, key: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Isolate an output failure (a sink, a file). Unlike a measurement's failure (`_safely` in the callbacks)
        it is never raised, not even in strict mode, and is logged at a limited rate per sink: a tracker that is
        down fails on every call, and losing its panels must not cost the run or flood its log."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self.failures.report(key, where, err)
            return None

    def _sinks(self, extra: Sequence[Any]) -> list[Any]:
        """The main process's sinks; the other ranks measure their share but write nothing."""
        if not self.is_main:
            return []
        return [s for s in (self.jsonl, *self.trackers, self.trainer_log) if s is not None] + list(extra)

    @staticmethod
    def _where(sink: Any) -> str:
        path = getattr(sink, "path", None)
        return f"{type(sink).__name__}" + (f" ({path})" if path else "")

    def _each(self, method: str, extra: Sequence[Any], *args: Any, **kwargs: Any) -> None:
        """Call `method` on every sink that has it; a failing sink never stops the others."""
        for sink in self._sinks(extra):
            fn = getattr(sink, method, None)
            if fn is not None:
                self._guard(str(id(sink)), f"{method} to {self._where(sink)}", fn, *args, **kwargs)

    def log(self, step: int, metrics: Mapping[str, float | None], context: Mapping[str, Any], extra=()) -> None:
        self._each("log", extra, step, metrics, **context)

    def event(self, step: int, name: str, detail: str = "", alert: bool = False, extra=(), **payload: Any) -> None:
        self._each("event", extra, step, name, detail=detail, alert=alert, **payload)

    def summary(self, values: Mapping[str, Any], extra=()) -> None:
        self._each("summary", extra, values)

    def takes_media(self, extra: Sequence[Any] = ()) -> bool:
        """Whether a sink of this (main) process takes tables and images: a tracker or an extra sink."""
        return self.is_main and any(hasattr(s, "media") for s in (*self.trackers, *extra))

    def media(self, step: int, name: str, item: Table | Image, extra=()) -> None:
        self._each("media", extra, step, name, item)

    def write_json(self, path: str, data: Any) -> bool:
        """An atomic JSON write whose failure is logged (rate-limited), never raised."""
        if not self.is_main:
            return False

        def write() -> bool:
            write_json_atomic(path, data)
            return True

        return bool(self._guard(f"json:{os.path.dirname(path)}", f"writing {path}", write))

    def merge_into_log(self, state: Any, logs: dict | None) -> None:
        """Put queued metrics into the trainer's log (`logs` of this `on_log`, `state.log_history`) at their step."""
        for step, metrics in self.trainer_log.drain():
            if logs is not None and step == state.global_step:
                logs.update(metrics)  # what the integrations after us and the console printer see
            entry = next((h for h in reversed(state.log_history) if h.get("step") == step), None)
            if entry is None:
                state.log_history.append({**metrics, "step": step})
            else:
                entry.update(metrics)

    # -- checkpoints and resume ----------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> str:
        return layout.checkpoint_dir(self.output_dir, step)

    def member_saved(self, key: str, state: Any) -> None:
        """Called by each member at the end of its `on_save`; the last one writes the state file."""
        self.merge_into_log(state, None)  # what was decided on the save (the RL start) joins the step's log entry
        step = int(state.global_step)
        done = self._saved.setdefault(step, set())
        done.add(key)
        if done >= set(self.members) and self.is_main and os.path.isdir(self.checkpoint_dir(step)):
            state = {
                "version": 1,
                "step": step,
                "jsonl_lines": self.jsonl.lines if self.jsonl else 0,
                "members": {k: cb.export_state() for k, cb in self.members.items()},
            }
            self.write_json(layout.monitor_state_path(self.checkpoint_dir(step)), state)

    def _prepare_outputs(self, args: Any, state: Any) -> None:
        step = int(state.global_step)
        if step == 0:
            self._set_aside_old_metrics()
            return
        candidates = [getattr(args, "resume_from_checkpoint", None), self.checkpoint_dir(step)]
        for checkpoint in [c for c in candidates if isinstance(c, str) and c]:
            path = layout.monitor_state_path(checkpoint)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
                if int(saved.get("step", -1)) == step:
                    self.restored = saved["members"]
                    if self.jsonl is not None:
                        self.jsonl.truncate(int(saved["jsonl_lines"]))
                    logger.warning("sftrl: resumed the monitor state of step %d from %s", step, path)
                    return
        logger.error(
            "sftrl: resuming at step %d but no %s was found in %s: the monitors start without their history "
            "(minima, flags and the RL-start choice restart here)",
            step,
            layout.MONITOR_STATE,
            self.checkpoint_dir(step),
        )

    def _set_aside_old_metrics(self) -> None:
        """A fresh run in an output_dir that holds another run's metrics.jsonl never appends to it."""
        if self.jsonl is None or not os.path.exists(self.jsonl.path) or self.jsonl.lines == 0:
            return
        old = self.jsonl.path.replace(".jsonl", f"-before-{time.time_ns() // 1_000_000}.jsonl")
        os.replace(self.jsonl.path, old)
        self.jsonl.lines = 0
        logger.warning("sftrl: %s held an earlier run's metrics; moved to %s", self.jsonl.path, old)
