"""Read the config out of an offline W&B run file (``run-<id>.wandb``).

wandb >= 0.19 no longer ships a Python reader for its transaction log, so this is the format in brief: a 7-byte
header (``:W&B``, a 2-byte magic, a version byte), then LevelDB-log records in 32 KiB blocks, each record a 7-byte
header (CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) followed by part of a serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768
HEADER = 7


def records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if pos + HEADER + length > len(data):
            break  # the writer is still appending this record: it is read on the next poll
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
    return out


def read_config(path: Path) -> dict:
    """The run's config as W&B stored it: top-level keys mapped to their JSON-decoded values."""
    from wandb.proto import wandb_internal_pb2

    config: dict = {}
    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "config":
            continue
        for item in record.config.update:
            keys = list(item.nested_key) or [item.key]
            target = config
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = json.loads(item.value_json)
    return config


def record_kinds(path: Path) -> list[str]:
    """The record types in the file, in order (for failure messages)."""
    from wandb.proto import wandb_internal_pb2

    kinds = []
    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kinds.append(record.WhichOneof("record_type"))
    return kinds


def wait_for_config(path: Path, key: str, timeout: float = 20.0) -> dict:
    """``read_config`` once ``key`` has reached the file: wandb-core's writer may still be flushing when
    ``run.finish()`` returns on a loaded machine (seen once in CI), so poll rather than read once."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            config = read_config(path)
        except DecodeError:  # a record caught mid-write; the writer finishes it shortly
            if time.monotonic() > deadline:
                raise
            config = {}
        if key in config or time.monotonic() > deadline:
            assert key in config, f"no {key!r} in the W&B config; records: {record_kinds(path)}"
            return config
        time.sleep(0.5)


def run_name(path: Path) -> str:
    """The display name stored in the run record."""
    from wandb.proto import wandb_internal_pb2

    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return record.run.display_name
    raise AssertionError(f"{path} has no run record")


def parsed(path: Path) -> list:
    """Every record of the file as a ``wandb_internal_pb2.Record``, in order."""
    from wandb.proto import wandb_internal_pb2

    out = []
    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def wait_for_exit(path: Path, timeout: float = 20.0) -> list:
    """The file's records once its ``exit`` record is written: everything the run logged is in them then (wandb-core
    may still be flushing when ``run.finish()`` returns on a loaded machine, see :func:`wait_for_config`)."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = parsed(path)
        except DecodeError:  # a record caught mid-write
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s: {record_kinds(path)}"
        time.sleep(0.5)


def history(found: list) -> dict[str, list]:
    """Every value logged with ``run.log``, by key (nested keys joined with ``/``), in the order logged."""
    values: dict[str, list] = {}
    for record in found:
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = "/".join(item.nested_key) if item.nested_key else item.key
            values.setdefault(key, []).append(json.loads(item.value_json))
    return values


def artifacts(found: list) -> list:
    """The ``ArtifactRecord`` of each artifact the run logged (name, type, aliases, manifest), in order."""
    return [r.artifact for r in found if r.WhichOneof("record_type") == "artifact"]


def media(values: dict[str, list]) -> dict[str, str]:
    """The W&B type (``images/separated``, ``table-file``, ``audio-file``, ``histogram``, ...) of each media key
    of :func:`history`'s values: W&B stores a medium's fields as nested keys, ``<key>/_type`` among them."""
    found = {}
    for key, logged in values.items():
        if key.endswith("/_type"):
            found[key[: -len("/_type")]] = logged[-1]
        elif isinstance(logged[-1], dict) and "_type" in logged[-1]:
            found[key] = logged[-1]["_type"]
    return found
