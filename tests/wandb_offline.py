"""Read back an offline W&B run file (`run-<id>.wandb`): wandb ships no reader for it.

Format: a 7-byte header (`:W&B`, uint16 0xBEE1, uint8 version), then 32 KiB blocks of LevelDB-log
records (crc32c uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last), each a
serialised `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def iter_records(path: str):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - (pos % BLOCK)
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            pending = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record
        pending = b""


def run_file(wandb_dir: str, timeout_s: float = 60.0) -> str:
    """The newest offline run file under `wandb_dir`, once it holds the run's closing `exit` record.

    `wandb.finish()` can return before W&B's service process has written the file out: a CI run once
    read such a file with no history at all. Waiting for the last record makes the read-back complete.
    """
    files = sorted(glob.glob(os.path.join(wandb_dir, "**", "offline-run-*", "run-*.wandb"), recursive=True))
    assert files, f"no offline W&B run under {wandb_dir}"
    path, deadline = files[-1], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if "exit" in record_types(path):
                break
        except Exception:  # a record still being written
            pass
        time.sleep(0.2)
    return path


def history(path: str) -> list[dict]:
    """Every `wandb.log` call of the run as a dict name -> decoded JSON value."""
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def record_types(path: str) -> list[str]:
    return [r.WhichOneof("record_type") for r in iter_records(path)]


def alerts(path: str) -> list:
    return [r.alert for r in iter_records(path) if r.WhichOneof("record_type") == "alert"]


def summary(path: str) -> dict:
    out = {}
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
