"""Check a store end to end: every part opens, is complete and self-consistent, every byte of
feature byte reads back and matches the crc32 its writer recorded, and the catalog matches.

Returns a list of Problems instead of raising, so one run reports everything that is wrong.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq

from featstore import schema as S
from featstore.catalog import CATALOG_SCHEMA, list_parts, open_part, read_part_index
from featstore.schema import Problem, StoreError

log = logging.getLogger(__name__)


def validate(store_dir: str | os.PathLike, deep: bool = True) -> list[Problem]:
    """All problems found in the store (empty list: valid). `deep=False` skips reading data."""
    store = Path(store_dir)
    if not store.is_dir():
        return [Problem(None, f"{store} is not a directory")]
    problems: list[Problem] = []
    indexes: dict[str, dict] = {}
    views_seen: dict[str, tuple[str, dict]] = {}
    for part in list_parts(store):
        path = store / S.PARTS_DIR / (part + S.PART_SUFFIX)
        found = _check_part(part, path, deep, views_seen)
        if isinstance(found, dict):
            indexes[part] = found
        else:
            problems.extend(found)
    for name in sorted(p.name for p in (store / S.PARTS_DIR).glob(".*.tmp-*")):
        log.info("%s: temp file of an unfinished writer (ignored by readers)", name)
    problems.extend(_check_catalog(store, indexes, set(list_parts(store))))
    return problems


def _check_part(part: str, path: Path, deep: bool,
                views_seen: dict[str, tuple[str, dict]]) -> dict | list[Problem]:
    try:
        f = open_part(path)
    except (OSError, ValueError) as e:
        return [Problem(part, f"cannot open {path}: truncated or corrupt ({e})")]
    problems: list[Problem] = []
    with f:
        try:
            index = read_part_index(f)
        except StoreError as e:
            return [Problem(part, str(e).removeprefix(f"part {part}: "))]
        except (OSError, KeyError, ValueError) as e:
            return [Problem(part, f"unreadable video index: {e}")]
        lengths, offsets = index["length"], index["offset"]
        n_ids = len(index["video_id"])
        if not (len(lengths) == len(offsets) == len(index["labels"]) == len(index["split"])
                == n_ids):
            return [Problem(part, "video index datasets have different lengths")]
        if len(set(index["video_id"])) != n_ids:
            problems.append(Problem(part, "duplicate video ids"))
        expect = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n_ids else offsets
        if (lengths < 1).any() or not np.array_equal(offsets, expect):
            problems.append(Problem(part, "offsets/lengths are not contiguous from row 0"))
        rows = int(lengths.sum())
        attrs = S.read_attrs(f)
        views = attrs.get("views", [])
        datasets: list[tuple[str, int | None]] = [(S.TIMESTAMPS, None)]
        for v in views:
            if f"{S.VIEWS_GROUP}/{v}" not in f:
                problems.append(Problem(part, f"view {v!r} listed but has no group"))
                continue
            va = S.read_attrs(f[f"{S.VIEWS_GROUP}/{v}"])
            g = f"{S.VIEWS_GROUP}/{v}"
            datasets.append((f"{g}/{S.FEATURES}", va.get("dim")))
            if "logits_dim" in va:
                datasets.append((f"{g}/{S.LOGITS}", va["logits_dim"]))
            for stage in va.get("stages", []):
                datasets.append((f"{g}/{S.STAGES_GROUP}/{stage}", None))
            schema_of_view = {k: va.get(k) for k in ("dim", "backbone", "input_size",
                                                     "logits_dim", "stages")}
            if v in views_seen and views_seen[v][1] != schema_of_view:
                problems.append(Problem(part, f"view {v!r} differs from part {views_seen[v][0]}:"
                                              f" {schema_of_view} vs {views_seen[v][1]}"))
            views_seen.setdefault(v, (part, schema_of_view))
        for name, dim in datasets:
            problems.extend(_check_dataset(part, f, name, rows, dim, deep))
    return problems or index


def _check_dataset(part: str, f: h5py.File, name: str, rows: int, dim: int | None,
                   deep: bool) -> list[Problem]:
    if name not in f:
        return [Problem(part, f"missing dataset {name}")]
    d = f[name]
    if d.shape[0] != rows:
        return [Problem(part, f"{name} has {d.shape[0]} rows, the video index covers {rows}")]
    if dim is not None and (d.ndim != 2 or d.shape[1] != dim):
        return [Problem(part, f"{name} has shape {d.shape}, view dim is {dim}")]
    if not deep:
        return []
    step = 4096
    crc = 0
    for start in range(0, rows, step):
        try:
            block = d[start: start + step]
        except (OSError, ValueError) as e:
            return [Problem(part, f"{name} rows {start}:{start + step} unreadable "
                                  f"(corrupt data: {e})")]
        crc = zlib.crc32(block.tobytes(), crc)
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            return [Problem(part, f"{name} rows {start}:{start + step} hold NaN/inf "
                                  "(corrupt data)")]
    want = d.attrs.get("crc32")
    if want is not None and int(want) != crc:
        return [Problem(part, f"{name}: crc32 of the data is {crc:#010x}, the writer recorded "
                              f"{int(want):#010x} (corrupt data)")]
    return []


def _check_catalog(store: Path, indexes: dict[str, dict], parts: set[str]) -> list[Problem]:
    path = store / S.CATALOG
    if not path.exists():
        return [Problem(None, f"no {S.CATALOG}: run build_catalog / `c2f featstore "
                              "validate --fix-catalog`")] if parts else []
    try:
        cat = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any parquet failure means the same to the user
        return [Problem(None, f"{S.CATALOG} unreadable: {e}")]
    missing_cols = set(CATALOG_SCHEMA.names) - set(cat.column_names)
    if missing_cols:
        return [Problem(None, f"{S.CATALOG} lacks columns {sorted(missing_cols)}")]
    problems: list[Problem] = []
    rows = cat.to_pydict()
    in_catalog: dict[str, int] = {}
    for i, (vid, part) in enumerate(zip(rows["video_id"], rows["part"])):
        if vid in in_catalog:
            problems.append(Problem(part, f"catalog lists video {vid!r} twice"))
        in_catalog[vid] = i
        if part not in parts:
            problems.append(Problem(part, f"catalog lists video {vid!r} in part {part}, which "
                                          "does not exist"))
    for part, index in indexes.items():
        for j, vid in enumerate(index["video_id"]):
            i = in_catalog.get(vid)
            if i is None:
                problems.append(Problem(part, f"video {vid!r} is missing from the catalog"))
                continue
            want = (part, int(index["offset"][j]), int(index["length"][j]),
                    list(index["labels"][j]), index["split"][j])
            got = (rows["part"][i], rows["offset"][i], rows["length"][i], rows["labels"][i],
                   rows["split"][i])
            if want != got:
                problems.append(Problem(part, f"catalog row for video {vid!r} is {got}, the "
                                              f"part says {want}"))
    return problems
