"""Convert existing per-video feature caches into a store.

Two layouts are common in this field: a folder of `<video>.npy` arrays [T, D] (as the
video_features tool writes them) and a folder of `<video>.pth` dicts {'fea': T x D tensor}
(as LiteEval's loaders read them). Labels and splits come from an optional manifest-like table
(CSV or parquet with columns video_id, labels, split); without one, videos get no labels and
`default_split`. Timestamps are not in these caches: row i gets time i / fps.

Trainers report GFLOPs, so every imported view must say what its features cost: the backbone
and input size that made them (measured later from backbones/), or, for a network the project
does not have, its per-frame GMACs (recorded as the view attribute `gmacs_per_frame`). A view
with neither is refused before anything is written. Every cache file is opened before the first
part is written, so a bad file (named in the error) leaves no half-imported store behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from featstore.catalog import build_catalog
from featstore.schema import GMACS_PER_FRAME, UNKNOWN_BACKBONE, ViewSpec
from featstore.writer import StoreWriter

log = logging.getLogger(__name__)

Folders = str | os.PathLike | Mapping[str, str | os.PathLike]


class CacheFileError(ValueError):
    """A cache file cannot be read as the format says; the message names the file."""


@dataclass(frozen=True)
class ViewOrigin:
    """What made one imported view: `backbone` at `input_size` (a network of backbones/, whose
    cost the trainers measure), or an unlisted network whose per-frame cost is `gmacs`."""

    backbone: str = UNKNOWN_BACKBONE
    input_size: int = 0
    gmacs: float | None = None

    def problem(self) -> str | None:
        """Why this origin cannot price the view's frames, or None when it can."""
        known = self.backbone != UNKNOWN_BACKBONE
        if known and self.gmacs is not None:
            return (f"has both a backbone ({self.backbone}) and given GMACs ({self.gmacs}); "
                    "give one: the backbone's cost is measured")
        if known and self.input_size < 1:
            return f"backbone {self.backbone} needs an input size >= 1, got {self.input_size}"
        if not known and self.gmacs is None:
            return ("has no backbone and no per-frame cost, so trainers cannot report its "
                    "GFLOPs; give --backbone VIEW=NAME@SIZE (a backbone `c2f flops` knows) or "
                    "--gmacs VIEW=X (its GMACs per frame)")
        if self.gmacs is not None and not self.gmacs > 0:
            return f"per-frame GMACs must be > 0, got {self.gmacs}"
        return None

    def view_spec(self, dim: int, attrs: dict[str, Any]) -> ViewSpec:
        extra = {} if self.gmacs is None else {GMACS_PER_FRAME: float(self.gmacs)}
        return ViewSpec(dim=dim, backbone=self.backbone, input_size=int(self.input_size),
                        attrs={**attrs, **extra})


Origins = ViewOrigin | Mapping[str, ViewOrigin]


def import_npy(folders: Folders, store_dir: str | os.PathLike, origins: Origins,
               **kwargs: Any) -> list[Path]:
    """Import `<video>.npy` [T, D] files; `folders` is one folder or {view: folder}, `origins`
    one ViewOrigin or {view: ViewOrigin}."""
    return _import(folders, store_dir, origins, ".npy", _load_npy, _shape_npy, **kwargs)


def import_pth(folders: Folders, store_dir: str | os.PathLike, origins: Origins,
               **kwargs: Any) -> list[Path]:
    """Import LiteEval-style `<video>.pth` dicts {'fea': [T, D]}; needs torch (imported here)."""
    return _import(folders, store_dir, origins, ".pth", _load_pth, _shape_pth, **kwargs)


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        with open(path, "rb") as f:
            magic = f.read(6)
        what = ("not a NumPy .npy file (no \\x93NUMPY header)" if magic != b"\x93NUMPY"
                else f"unreadable .npy file ({exc})")
        raise CacheFileError(f"{path}: {what}") from exc


def _shape_npy(path: Path) -> tuple[int, ...]:
    return tuple(_load_npy(path, mmap=True).shape)


def _pth_tensor(path: Path, mmap: bool) -> Any:
    import pickle

    import torch  # lazily: featstore itself never needs torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        if mmap:  # files in torch's legacy (non-zip) format cannot be memory-mapped
            return _pth_tensor(path, mmap=False)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CacheFileError(f"{path}: not a readable .pth tensor file ({first})") from exc
    if isinstance(obj, dict):
        if "fea" not in obj:
            raise CacheFileError(f"{path}: dict without a 'fea' entry (keys {sorted(obj)})")
        obj = obj["fea"]
    if not isinstance(obj, torch.Tensor):
        raise CacheFileError(f"{path}: expected a tensor or {{'fea': tensor}}, got {type(obj)}")
    return obj


def _load_pth(path: Path) -> np.ndarray:
    return _pth_tensor(path, mmap=False).detach().float().numpy()


def _shape_pth(path: Path) -> tuple[int, ...]:
    return tuple(_pth_tensor(path, mmap=True).shape)


def _import(
    folders: Folders,
    store_dir: str | os.PathLike,
    origins: Origins,
    suffix: str,
    load: Callable[[Path], np.ndarray],
    shape_of: Callable[[Path], tuple[int, ...]],
    *,
    view: str = "features",
    manifest: str | os.PathLike | None = None,
    default_split: str = "train",
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
    if isinstance(origins, ViewOrigin):
        origins = {v: origins for v in dirs}
    _check_origins(dirs, origins)
    for v, d in dirs.items():
        if not d.is_dir():
            raise ValueError(f"view {v!r}: {d} is not a folder")
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
    dims = _check_shapes({v: {i: files[v][i] for i in ids} for v in dirs}, shape_of)
    views = {v: origins[v].view_spec(dims[v], {"imported_from": str(dirs[v].resolve()),
                                               "format": suffix[1:]})
             for v in dirs}
    file_attrs = {"fps": float(fps), "timestamps": "synthesised: row index / fps",
                  "source": f"import of per-video {suffix} files", **dict(attrs or {})}
    written = []
    for k, start in enumerate(range(0, len(ids), videos_per_part)):
        part = f"{part_prefix}-{k:06d}"
        with StoreWriter(store_dir, part, views, attrs=file_attrs) as w:
            for vid in ids[start: start + videos_per_part]:
                feats = {v: load(files[v][vid]) for v in dirs}
                labels, split = meta[vid] if meta is not None else ([], default_split)
                length = next(iter(feats.values())).shape[0]
                w.add_video(vid, labels, split, np.arange(length) / fps, feats)
        written.append(w.path)
    build_catalog(store_dir)
    log.info("imported %d videos into %d parts of %s", len(ids), len(written), store_dir)
    return written


def _check_origins(dirs: Mapping[str, Path], origins: Mapping[str, ViewOrigin]) -> None:
    """Refuse, naming the view, any view whose frames could not be priced by the trainers."""
    extra = sorted(set(origins) - set(dirs))
    if extra:
        raise ValueError(f"backbone or GMACs given for {extra}, which are not imported views "
                         f"(views: {sorted(dirs)})")
    for v in dirs:
        problem = origins.get(v, ViewOrigin()).problem()
        if problem:
            raise ValueError(f"view {v!r} {problem}")


def _check_shapes(files: Mapping[str, Mapping[str, Path]],
                  shape_of: Callable[[Path], tuple[int, ...]]) -> dict[str, int]:
    """Open every file's header once before writing: each is [T, D], D is the same within a
    view and T the same across views for a video. Returns each view's D."""
    dims: dict[str, int] = {}
    lengths: dict[str, tuple[int, Path]] = {}
    for v, by_id in files.items():
        for vid, path in by_id.items():
            shape = shape_of(path)
            if len(shape) != 2 or shape[0] < 1:
                raise CacheFileError(f"{path}: expected a [T, D] array with T >= 1, got shape "
                                     f"{list(shape)}")
            if dims.setdefault(v, shape[1]) != shape[1]:
                raise CacheFileError(f"{path}: width {shape[1]}, but other files of view {v!r} "
                                     f"have {dims[v]}")
            first = lengths.setdefault(vid, (shape[0], path))
            if first[0] != shape[0]:
                raise CacheFileError(f"video {vid!r}: {path} has {shape[0]} frames but "
                                     f"{first[1]} has {first[0]}")
    return dims


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
