"""The failures table: plans a run gave up on, next to the outputs they would have made.

A shard or part whose task raised, or whose worker died more than `--max-retries` times (a
video that crashes native code every time, a node that keeps dying), is not retried forever:
the run finishes the rest and lists the lost plans here, one row each with the reason. The
table describes the latest run, so a re-run that finishes everything removes it. Completion
itself is never recorded here: a finished shard or part is its atomically renamed file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from featstore import storage

FAILURES_FILE = "failures.parquet"
SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("shard", pa.string()),
        ("part", pa.string()),
        ("attempts", pa.int64()),
        ("worker_died", pa.bool_()),
        ("reason", pa.string()),
    ]
)


@dataclass(frozen=True)
class FailedPlan:
    """One plan the run gave up on."""

    index: int
    shard: str
    part: str
    attempts: int
    worker_died: bool
    reason: str


def write_failures(folder: str | os.PathLike, failed: Sequence[FailedPlan]) -> str | None:
    """Write FOLDER/failures.parquet (atomically; FOLDER may be a URL), or remove it when
    nothing failed."""
    path = storage.join(folder, FAILURES_FILE)
    if not failed:
        storage.delete(path)
        return None
    columns = {name: [getattr(f, name) for f in failed] for name in SCHEMA.names}
    storage.write_parquet(pa.table(columns, schema=SCHEMA), path)
    return path


def read_failures(folder: str | os.PathLike) -> list[FailedPlan]:
    """The rows of FOLDER/failures.parquet; [] when the last run lost nothing."""
    path = storage.join(folder, FAILURES_FILE)
    if not storage.exists(path):
        return []
    return [FailedPlan(**row) for row in storage.read_parquet(path).to_pylist()]


def remove_orphan_temps(finals: Sequence[str | os.PathLike]) -> int:
    """Delete temporary files left next to `finals` by attempts that were killed.

    Writers name their temporary file `.NAME.tmp-*` beside the final NAME; a worker killed
    mid-write (node loss, OOM kill) leaves it behind. Call only when no attempt of these plans
    can still be running (after the run). Returns how many were removed.
    """
    removed = 0
    for final in map(Path, (f for f in finals if not storage.is_remote(f))):
        for tmp in final.parent.glob(f".{final.name}.tmp-*"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
