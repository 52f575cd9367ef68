"""Write one part file of a feature store: all videos of one shard, every view, one .h5 file.

Videos are buffered in memory and written at `close()` as contiguous (unchunked) float16
datasets: a per-video read is then one hyperslab of consecutive bytes, measured 2x faster than
64-row chunks (benchmarks/README.md). A part is one shard, so the buffer is one shard's
features (e.g. 64 videos x 170 frames x (1280 + 2048) x 2 B = 72 MB). The file is written under
a temporary name in `parts/` and renamed only when `close()` has written the data, the index and
the `complete` flag: a part under its final name is whole. For a store in object storage
(`s3://…`) the temporary file is local (featstore.storage staging folder) and uploaded at
`close()`; the object appears only when the upload completes.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from featstore import atomic, storage
from featstore import schema as S
from featstore.schema import StoreError, ViewSpec

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

RESERVED_FILE_ATTRS = {"schema", "schema_version", "part", "complete", "created_utc", "views",
                       "num_videos", "num_frames"}
RESERVED_VIEW_ATTRS = {"dim", "backbone", "input_size", "stages", "logits_dim"}


def part_path(store_dir: str | os.PathLike, part: str) -> Path | str:
    """Final path of a part (a URL for a store in object storage); parts are named after their
    shard, e.g. `shard-000000`."""
    if not part or "/" in part or part.startswith(".") or part != part.strip():
        raise ValueError(f"bad part name {part!r}: use a plain file stem like 'shard-000000'")
    if storage.is_remote(store_dir):
        return storage.join(store_dir, S.PARTS_DIR, part + S.PART_SUFFIX)
    return Path(store_dir) / S.PARTS_DIR / (part + S.PART_SUFFIX)


class StoreWriter:
    """Writes one part. Use as a context manager, or call `close()` (or `abort()` on failure).

    `views` maps view name to ViewSpec; `stage_dims` {view: {stage: dim}} and `logits_dim`
    {view: classes} declare the optional per-stage features and logits each video must carry.
    Every data dataset gets a `crc32` attribute over its raw bytes, so `validate` detects
    flipped bits without slowing every read (HDF5's fletcher32 filter halved read throughput,
    see benchmarks/README.md).
    """

    def __init__(
        self,
        store_dir: str | os.PathLike,
        part: str,
        views: Mapping[str, ViewSpec],
        stage_dims: Mapping[str, Mapping[str, int]] | None = None,
        logits_dim: Mapping[str, int] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if not views:
            raise ValueError("a part needs at least one view")
        self.part = part
        self.path = part_path(store_dir, part)
        self.remote = storage.is_remote(store_dir)
        if storage.exists(self.path):
            raise StoreError(f"part {part} already exists at {self.path}; finished parts are "
                             "never rewritten (delete it to redo it)")
        self.views = dict(views)
        self.stage_dims = {v: dict(d) for v, d in (stage_dims or {}).items()}
        self.logits_dim = dict(logits_dim or {})
        for name in list(self.stage_dims) + list(self.logits_dim):
            if name not in self.views:
                raise ValueError(f"stages/logits declared for unknown view {name!r}")
        attrs = dict(attrs or {})
        clash = RESERVED_FILE_ATTRS & set(attrs)
        if clash:
            raise ValueError(f"file attrs {sorted(clash)} are reserved by the store format")
        self._blocks: dict[str, list[np.ndarray]] = {}
        self._dims: dict[str, tuple[int, ...]] = {}
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._lengths: list[int] = []
        self._labels: list[str] = []
        self._splits: list[str] = []
        self._rows = 0
        if self.remote:
            storage.check_access(store_dir)
            fd, tmp = tempfile.mkstemp(dir=storage.staging_dir(), prefix=f".{part}.tmp-",
                                       suffix=S.PART_SUFFIX)
            os.close(fd)
            self.tmp_path = Path(tmp)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp_path = atomic.temp_name(self.path)
        self._f = h5py.File(self.tmp_path, "w")
        try:
            self._create(attrs)
        except BaseException:
            self.abort()
            raise

    def _create(self, attrs: dict[str, Any]) -> None:
        f = self._f
        f.attrs["schema"] = S.SCHEMA
        f.attrs["schema_version"] = S.SCHEMA_VERSION
        f.attrs["part"] = self.part
        f.attrs["complete"] = False
        f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["views" + S.JSON_SUFFIX] = json.dumps(list(self.views))
        S.write_attrs(f, attrs)
        self._ts = self._new_dataset(S.TIMESTAMPS, None)
        self._data: dict[tuple[str, str], str] = {}
        for name, spec in self.views.items():
            clash = RESERVED_VIEW_ATTRS & set(spec.attrs)
            if clash:
                raise ValueError(f"view {name!r}: attrs {sorted(clash)} are reserved")
            g = f.create_group(f"{S.VIEWS_GROUP}/{name}")
            g.attrs["dim"] = int(spec.dim)
            g.attrs["backbone"] = spec.backbone
            g.attrs["input_size"] = int(spec.input_size)
            S.write_attrs(g, spec.attrs)
            self._data[name, S.FEATURES] = self._new_dataset(f"{g.name}/{S.FEATURES}", spec.dim)
            if name in self.logits_dim:
                g.attrs["logits_dim"] = int(self.logits_dim[name])
                self._data[name, S.LOGITS] = self._new_dataset(
                    f"{g.name}/{S.LOGITS}", self.logits_dim[name])
            if name in self.stage_dims:
                g.attrs["stages" + S.JSON_SUFFIX] = json.dumps(list(self.stage_dims[name]))
                for stage, dim in self.stage_dims[name].items():
                    self._data[name, "stage:" + stage] = self._new_dataset(
                        f"{g.name}/{S.STAGES_GROUP}/{stage}", dim)

    def _new_dataset(self, path: str, dim: int | None) -> str:
        """Register a dataset to be written at close; returns its path."""
        self._blocks[path] = []
        self._dims[path] = () if dim is None else (int(dim),)
        return path

    def add_video(
        self,
        video_id: str,
        labels: Sequence[str],
        split: str,
        timestamps: np.ndarray | Sequence[float],
        features: Mapping[str, np.ndarray],
        logits: Mapping[str, np.ndarray] | None = None,
        stages: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        """Append one video: T rows in every view (and in its declared logits/stages)."""
        if self._f is None:
            raise StoreError(f"part {self.part}: writer is closed")
        if not isinstance(video_id, str) or not video_id:
            raise ValueError(f"video_id must be a non-empty string, got {video_id!r}")
        if video_id in self._seen:
            raise ValueError(f"part {self.part}: video {video_id!r} added twice")
        ts = np.asarray(timestamps, dtype=S.TIMESTAMP_DTYPE).reshape(-1)
        t = len(ts)
        if t < 1:
            raise ValueError(f"video {video_id!r}: no frames")
        blocks: dict[tuple[str, str], np.ndarray] = {}
        if set(features) != set(self.views):
            raise ValueError(f"video {video_id!r}: features for views {sorted(features)}, "
                             f"part has {sorted(self.views)}")
        for name, arr in features.items():
            blocks[name, S.FEATURES] = _check(video_id, name, arr, t, self.views[name].dim)
        logits = logits or {}
        if set(logits) != set(self.logits_dim):
            raise ValueError(f"video {video_id!r}: logits for {sorted(logits)}, part declares "
                             f"{sorted(self.logits_dim)}")
        for name, arr in logits.items():
            blocks[name, S.LOGITS] = _check(video_id, f"{name} logits", arr, t,
                                            self.logits_dim[name])
        stages = stages or {}
        if set(stages) != set(self.stage_dims):
            raise ValueError(f"video {video_id!r}: stages for {sorted(stages)}, part declares "
                             f"{sorted(self.stage_dims)}")
        for name, per_stage in stages.items():
            if set(per_stage) != set(self.stage_dims[name]):
                raise ValueError(f"video {video_id!r} view {name!r}: stages {sorted(per_stage)}, "
                                 f"declared {list(self.stage_dims[name])}")
            for stage, arr in per_stage.items():
                blocks[name, "stage:" + stage] = _check(
                    video_id, f"{name}/{stage}", arr, t, self.stage_dims[name][stage])
        self._blocks[self._ts].append(ts)
        for key, block in blocks.items():
            self._blocks[self._data[key]].append(block)
        self._rows += t
        self._ids.append(video_id)
        self._seen.add(video_id)
        self._lengths.append(t)
        self._labels.append(json.dumps([str(x) for x in labels]))
        self._splits.append(str(split))

    @property
    def num_videos(self) -> int:
        return len(self._ids)

    def close(self) -> Path:
        """Write the video index, mark the part complete, fsync and rename it into place."""
        if self._f is None:
            return self.path
        f = self._f
        try:
            text = h5py.string_dtype("utf-8")
            lengths = np.asarray(self._lengths, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            f.create_dataset(S.VIDEO_IDS, data=np.array(self._ids, dtype=object), dtype=text)
            f.create_dataset(S.VIDEO_OFFSET, data=offsets[: len(lengths)])
            f.create_dataset(S.VIDEO_LENGTH, data=lengths)
            f.create_dataset(S.VIDEO_LABELS, data=np.array(self._labels, dtype=object),
                             dtype=text)
            f.create_dataset(S.VIDEO_SPLIT, data=np.array(self._splits, dtype=object), dtype=text)
            for path, blocks in self._blocks.items():
                dtype = S.TIMESTAMP_DTYPE if path == self._ts else S.FEATURE_DTYPE
                data = (np.concatenate(blocks) if blocks
                        else np.empty((0,) + self._dims[path], dtype=dtype))
                dset = f.create_dataset(path, data=data)
                dset.attrs["crc32"] = np.uint32(zlib.crc32(data.tobytes()))
                blocks.clear()
            f.attrs["num_videos"] = len(self._ids)
            f.attrs["num_frames"] = self._rows
            f.attrs["complete"] = True
            f.close()
            self._f = None
            if self.remote:
                storage.upload(self.tmp_path, self.path)
                self.tmp_path.unlink()
            else:
                atomic.publish(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        log.debug("wrote part %s: %d videos, %d frames", self.path, len(self._ids), self._rows)
        return self.path

    def abort(self) -> None:
        """Drop the half-written temp file; nothing appears under the final name."""
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check(video_id: str, what: str, arr: np.ndarray, t: int, dim: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != (t, dim):
        raise ValueError(f"video {video_id!r} {what}: shape {a.shape}, expected ({t}, {dim})")
    with np.errstate(over="ignore"):  # overflow becomes inf, rejected just below
        out = np.ascontiguousarray(a, dtype=S.FEATURE_DTYPE)
    if not np.isfinite(out).all():
        raise ValueError(f"video {video_id!r} {what}: non-finite values (NaN, or beyond float16 "
                         "range ±65504)")
    return out

