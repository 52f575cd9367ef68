"""Convert existing per-video feature caches into a store.

Two layouts are common in this field: a folder of `<video>.npy` arrays [T, D] (as the
video_features tool writes them) and a folder of `<video>.pth` dicts {'fea': T x D tensor}
(as LiteEval's loaders read them). Labels and splits come from an optional manifest-like table
(CSV or parquet with columns video_id, labels, split); without one, videos get no labels and
`default_split`. Timestamps are not in these caches: row i gets time i / fps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from featstore.catalog import build_catalog
from featstore.schema import ViewSpec
from featstore.writer import StoreWriter

log = logging.getLogger(__name__)

Folders = str | os.PathLike | Mapping[str, str | os.PathLike]


def import_npy(folders: Folders, store_dir: str | os.PathLike, **kwargs: Any) -> list[Path]:
    """Import `<video>.npy` [T, D] files; `folders` is one folder or {view: folder}."""
    return _import(folders, store_dir, ".npy", _load_npy, **kwargs)


def import_pth(folders: Folders, store_dir: str | os.PathLike, **kwargs: Any) -> list[Path]:
    """Import LiteEval-style `<video>.pth` dicts {'fea': [T, D]}; needs torch (imported here)."""
    return _import(folders, store_dir, ".pth", _load_pth, **kwargs)


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _load_pth(path: Path) -> np.ndarray:
    import torch  # lazily: featstore itself never needs torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        if "fea" not in obj:
            raise ValueError(f"{path}: dict without a 'fea' entry (keys {sorted(obj)})")
        obj = obj["fea"]
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"{path}: expected a tensor or {{'fea': tensor}}, got {type(obj)}")
    return obj.detach().float().numpy()


def _import(
    folders: Folders,
    store_dir: str | os.PathLike,
    suffix: str,
    load: Callable[[Path], np.ndarray],
    *,
    view: str = "features",
    manifest: str | os.PathLike | None = None,
    default_split: str = "train",
    backbone: str = "unknown",
    input_size: int = 0,
    fps: float = 1.0,
    videos_per_part: int = 1000,
    part_prefix: str = "import",
    attrs: Mapping[str, Any] | None = None,
) -> list[Path]:
    if isinstance(folders, (str, os.PathLike)):
        folders = {view: folders}
    dirs = {v: Path(p) for v, p in folders.items()}
    if not dirs:
        raise ValueError("no folders to import")
    files = {v: {p.name[: -len(suffix)]: p for p in d.iterdir() if p.name.endswith(suffix)}
             for v, d in dirs.items()}
    ids = sorted(set().union(*(set(f) for f in files.values())))
    if not ids:
        raise ValueError(f"no *{suffix} files in {sorted(str(d) for d in dirs.values())}")
    for v, found in files.items():
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValueError(f"view {v!r} ({dirs[v]}) lacks {len(missing)} videos the other "
                             f"views have, e.g. {missing[:3]}")
    meta = _read_labels(manifest, default_split) if manifest is not None else None
    if meta is not None:
        unknown = [i for i in ids if i not in meta]
        if unknown:
            log.warning("%d videos are not in the manifest %s and are skipped, e.g. %s",
                        len(unknown), manifest, unknown[:3])
            ids = [i for i in ids if i in meta]
    dims = {v: int(load(files[v][ids[0]]).shape[-1]) for v in dirs}
    views = {v: ViewSpec(dim=dims[v], backbone=backbone, input_size=input_size,
                         attrs={"imported_from": str(dirs[v].resolve()), "format": suffix[1:]})
             for v in dirs}
    file_attrs = {"fps": float(fps), "timestamps": "synthesised: row index / fps",
                  "source": f"import of per-video {suffix} files", **dict(attrs or {})}
    written = []
    for k, start in enumerate(range(0, len(ids), videos_per_part)):
        part = f"{part_prefix}-{k:06d}"
        with StoreWriter(store_dir, part, views, attrs=file_attrs) as w:
            for vid in ids[start: start + videos_per_part]:
                feats = {v: load(files[v][vid]) for v in dirs}
                lengths = {a.shape[0] for a in feats.values()}
                if len(lengths) != 1:
                    raise ValueError(f"video {vid!r}: views have different frame counts "
                                     f"{ {v: a.shape for v, a in feats.items()} }")
                labels, split = meta[vid] if meta is not None else ([], default_split)
                w.add_video(vid, labels, split, np.arange(lengths.pop()) / fps, feats)
        written.append(w.path)
    build_catalog(store_dir)
    log.info("imported %d videos into %d parts of %s", len(ids), len(written), store_dir)
    return written


def _read_labels(path: str | os.PathLike, default_split: str) -> dict[str, tuple[list[str], str]]:
    """video_id -> (labels, split) from a parquet or CSV table.

    In CSV, `labels` is one string with labels separated by ';' (empty: no labels); `split`
    may be absent (then every video gets `default_split`).
    """
    p = Path(path)
    if p.suffix == ".parquet":
        table = pq.read_table(p)
    else:
        opts = pacsv.ConvertOptions(column_types={"video_id": pa.string(),
                                                  "labels": pa.string(), "split": pa.string()},
                                    strings_can_be_null=False)
        table = pacsv.read_csv(p, convert_options=opts)
    if "video_id" not in table.column_names or "labels" not in table.column_names:
        raise ValueError(f"{p}: needs columns video_id and labels, has {table.column_names}")
    ids = table.column("video_id").to_pylist()
    labels = table.column("labels").to_pylist()
    splits = (table.column("split").to_pylist() if "split" in table.column_names
              else [default_split] * len(ids))
    out = {}
    for vid, lab, split in zip(ids, labels, splits):
        if isinstance(lab, str):
            lab = [x.strip() for x in lab.split(";") if x.strip()]
        out[str(vid)] = ([str(x) for x in (lab or [])], str(split or default_split))
    return out
