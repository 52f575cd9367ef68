"""The catalog: one parquet table mapping every video to its part, row offset and length.

Readers load it once instead of opening every part to find a video; it is rebuilt from the
parts (the source of truth) whenever parts are added.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa

from featstore import schema as S
from featstore import storage
from featstore.schema import StoreError

log = logging.getLogger(__name__)

CATALOG_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("part", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
    ],
    metadata={b"schema": S.SCHEMA.encode(), b"schema_version": str(S.SCHEMA_VERSION).encode()},
)


def list_parts(store_dir: str | os.PathLike) -> list[str]:
    """Names of the finished parts (temp files of unfinished writers are ignored), sorted.
    `store_dir` may be a local folder or a URL (`s3://…`)."""
    names = storage.list_names(storage.join(store_dir, S.PARTS_DIR))
    return sorted(n[: -len(S.PART_SUFFIX)] for n in names
                  if n.endswith(S.PART_SUFFIX) and not n.startswith("."))


def open_part(path: str | os.PathLike) -> h5py.File:
    """Open a finished part read-only with HDF5 file locking off.

    Parts are write-once (renamed into place when complete, never modified), so readers need
    neither locks nor SWMR; locking off lets any number of processes read, also on NFS. A URL
    opens with ranged reads (fine for the index; trainers stage parts, featstore/cache.py).
    """
    if storage.is_remote(path):
        return h5py.File(storage.open_input(path), "r", locking=False)
    return h5py.File(path, "r", locking=False)


def read_part_index(f: h5py.File) -> dict[str, np.ndarray | list]:
    """The per-video index of an open part: ids, offsets, lengths, labels (lists), splits."""
    part = _attr_str(f.attrs.get("part", Path(f.filename).stem))
    if _attr_str(f.attrs.get("schema", "")) != S.SCHEMA:
        raise StoreError(f"part {part}: not a {S.SCHEMA} file ({f.filename})")
    version = int(f.attrs.get("schema_version", -1))
    if version != S.SCHEMA_VERSION:
        raise StoreError(f"part {part}: schema version {version}, this code reads "
                         f"{S.SCHEMA_VERSION}")
    if not bool(f.attrs.get("complete", False)):
        raise StoreError(f"part {part}: not marked complete (its writer did not finish)")
    return {
        "video_id": [_attr_str(x) for x in f[S.VIDEO_IDS][()]],
        "offset": np.asarray(f[S.VIDEO_OFFSET][()], dtype=np.int64),
        "length": np.asarray(f[S.VIDEO_LENGTH][()], dtype=np.int64),
        "labels": [json.loads(_attr_str(x)) for x in f[S.VIDEO_LABELS][()]],
        "split": [_attr_str(x) for x in f[S.VIDEO_SPLIT][()]],
    }


def build_catalog(store_dir: str | os.PathLike) -> pa.Table:
    """Scan every part's index and write STORE/catalog.parquet atomically (temp + rename).

    Raises StoreError naming the part when a part cannot be read or a video id appears in two
    parts: a catalog is only written for a consistent store.
    """
    store = str(store_dir)
    columns: dict[str, list] = {name: [] for name in CATALOG_SCHEMA.names}
    seen: dict[str, str] = {}
    for part in list_parts(store):
        path = storage.join(store, S.PARTS_DIR, part + S.PART_SUFFIX)
        try:
            with open_part(path) as f:
                index = read_part_index(f)
        except (OSError, KeyError, ValueError) as e:
            raise StoreError(f"part {part}: cannot read its index ({path}): {e}") from e
        for vid in index["video_id"]:
            if vid in seen:
                raise StoreError(f"video {vid!r} is in part {seen[vid]} and in part {part}")
            seen[vid] = part
        n = len(index["video_id"])
        for name in ("video_id", "offset", "length", "labels", "split"):
            columns[name].extend(list(index[name]))
        columns["part"].extend([part] * n)
    table = pa.table(columns, schema=CATALOG_SCHEMA)
    final = storage.join(store, S.CATALOG)
    storage.write_parquet(table, final)
    log.info("catalog %s: %d videos in %d parts", final, table.num_rows,
             len(set(columns["part"])))
    return table


def _attr_str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
