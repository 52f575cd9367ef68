"""Read a feature store: per-video [T, D] float16 arrays by id, lazily, in any process.

Part files are opened on first use by the process that reads them. The store remembers the pid
that opened its handles; after a fork (DataLoader workers) the child sees a different pid and
opens its own handles, so no h5py handle is ever shared across processes. Pickling drops the
handles too (spawn-started workers).

At most `max_open` parts are open at once per process (least recently used closed first): a
shuffled epoch over FCVID's 1,426 parts would otherwise exceed the usual 1024 open-file limit.
Parts are write-once and their datasets contiguous (docs/featstore.md), so the first open of a
part records where each dataset's bytes lie; from then on the part's handle is a plain file
descriptor and rows are read with os.preadv, which releases the GIL and makes re-opening an
evicted part one open(2) instead of an HDF5 file open. Parts whose datasets are stored
otherwise (chunked, filtered: an independent writer) keep an h5py handle. One lock serialises
opening, evicting and reading, so a prefetch thread and the caller can share a store.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featstore import schema as S
from featstore import storage
from featstore.cache import PartCache
from featstore.catalog import build_catalog, list_parts, open_part
from featstore.schema import StoreError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

DEFAULT_MAX_OPEN = 128  # parts open at once per process; well under the common 1024 fd limit

def open_store(
    store_dir: str | os.PathLike,
    max_open: int = DEFAULT_MAX_OPEN,
    cache_dir: str | os.PathLike | None = None,
    cache_bytes: int | None = None,
) -> Store:
    """Open a store for reading. Only the catalog is read now; parts open on first read.

    max_open: parts kept open at once in each process (least recently used closed first).
    A store in object storage (`s3://…`) is read through a bounded local cache of parts
    (featstore/cache.py: `cache_dir`, `cache_bytes`, or C2F_STORE_CACHE / C2F_STORE_CACHE_GB).
    """
    if storage.is_remote(store_dir):
        cache = PartCache.for_store(str(store_dir), cache_dir, cache_bytes)
        return Store(cache.fetch_catalog(), max_open=max_open, part_cache=cache)
    return Store(store_dir, max_open=max_open)


class Store:
    """Read-only view of a store directory (STORE/parts/*.h5 + STORE/catalog.parquet)."""

    def __init__(
        self,
        store_dir: str | os.PathLike,
        max_open: int = DEFAULT_MAX_OPEN,
        part_cache: PartCache | None = None,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self.path = Path(store_dir)
        self.part_cache = part_cache  # parts staged from object storage (open_store)
        if not self.path.is_dir():
            raise StoreError(f"no feature store at {self.path}")
        self.catalog = self._load_catalog()
        ids = self.catalog.column("video_id").to_pylist()
        parts = self.catalog.column("part").to_pylist()
        offsets = self.catalog.column("offset").to_pylist()
        lengths = self.catalog.column("length").to_pylist()
        self._labels = self.catalog.column("labels").to_pylist()
        self._splits = self.catalog.column("split").to_pylist()
        self._ids = ids
        self._row = {vid: i for i, vid in enumerate(ids)}
        if len(self._row) != len(ids):
            raise StoreError(f"{self.path / S.CATALOG}: duplicate video ids")
        self._loc = [(p, int(o), int(n)) for p, o, n in zip(parts, offsets, lengths)]
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._handles: OrderedDict[str, int | h5py.File] = OrderedDict()
        self._layouts: dict[str, dict[str, _Layout]] = {}  # facts about write-once files
        self._meta: dict[str, Any] | None = None

    def _load_catalog(self) -> pa.Table:
        path = self.path / S.CATALOG
        if path.exists():
            try:
                return pq.read_table(path)
            except (OSError, pa.ArrowInvalid) as e:
                raise StoreError(f"catalog {path} is unreadable: {e}") from e
        if not list_parts(self.path):
            raise StoreError(f"{self.path} has no parts and no catalog: not a feature store")
        log.warning("%s has no catalog.parquet; building it from the parts", self.path)
        return build_catalog(self.path)

    # ---- handles, per process -------------------------------------------------------------

    def _part_path(self, part: str) -> Path:
        """The local file of `part` (staged into the cache first for a store in object storage;
        an evicted part's open handles stay readable, so only opening needs the file)."""
        if self.part_cache is not None:
            return self.part_cache.ensure(part)
        return self.path / S.PARTS_DIR / (part + S.PART_SUFFIX)

    def _handle(self, part: str) -> int | h5py.File:
        """The open handle of `part` in this process (opened now if needed, LRU-bounded): a
        file descriptor when every dataset is plain bytes, else an h5py file."""
        self._adopt_after_fork()
        h = self._handles.get(part)
        if h is not None:
            self._handles.move_to_end(part)
            return h
        while len(self._handles) >= self.max_open:
            self._evict_oldest()
        layout = self._layouts.get(part)
        if layout is None:
            f = self._open_h5(part)
            try:
                layout = _scan_layout(f)
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                f.close()
                raise StoreError(f"part {part}: cannot read its datasets (corrupt part?): "
                                 f"{e}") from e
            self._layouts[part] = layout
            if _all_plain(layout):
                f.close()
                h = self._open_fd(part)
            else:
                h = f
        elif _all_plain(layout):
            h = self._open_fd(part)
        else:
            h = self._open_h5(part)
        self._handles[part] = h
        return h

    def _open_h5(self, part: str) -> h5py.File:
        path = self._part_path(part)
        try:
            f = open_part(path)
        except (OSError, ValueError) as e:
            raise StoreError(f"part {part}: cannot open {path}: {e}") from e
        if not bool(f.attrs.get("complete", False)):
            f.close()
            raise StoreError(f"part {part}: not marked complete ({path})")
        return f

    def _open_fd(self, part: str) -> int:
        path = self._part_path(part)
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise StoreError(f"part {part}: cannot open {path}: {e}") from e

    def _adopt_after_fork(self) -> None:
        if os.getpid() != self._pid:
            # Forked child: the parent's h5py handles (and lock state) are not ours to use or
            # close; inherited descriptors are our own copies, closed to keep within the limit.
            for h in self._handles.values():
                if isinstance(h, int):
                    _close_fd(h)
            self._handles, self._pid = OrderedDict(), os.getpid()
            self._lock = threading.RLock()

    def _evict_oldest(self) -> None:
        _, h = self._handles.popitem(last=False)
        _close_handle(h)

    def open_parts(self) -> int:
        """How many part files this process holds open now (at most `max_open`)."""
        return len(self._handles) if os.getpid() == self._pid else 0

    def _layout(self, part: str, path: str) -> tuple[int | h5py.File, _Layout]:
        h = self._handle(part)
        try:
            return h, self._layouts[part][path]
        except KeyError:
            raise StoreError(f"part {part}: has no dataset {path!r}") from None

    def _rows(self, video_id: str, path: str) -> np.ndarray:
        try:
            part, off, n = self._loc[self._row[video_id]]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the store {self.path}") from None
        self._adopt_after_fork()
        with self._lock:
            h, d = self._layout(part, path)
            if off < 0 or off + n > d.shape[0]:
                raise StoreError(f"part {part}: video {video_id!r} rows {off}:{off + n} lie "
                                 f"outside {path} ({d.shape[0]} rows); catalog and part disagree")
            try:
                return _read_rows(h, path, d, off, n)
            except (OSError, ValueError) as e:
                raise StoreError(f"part {part}: reading {path} rows {off}:{off + n} for video "
                                 f"{video_id!r} failed (corrupt part?): {e}") from e

    # ---- metadata ---------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        """Views and their attributes, read from the first part (all parts share them)."""
        if self._meta is None:
            parts = sorted({p for p, _, _ in self._loc}) or list_parts(self.path)
            if not parts:
                raise StoreError(f"{self.path}: no parts")
            with self._open_h5(parts[0]) as f:  # read once; not one of the LRU handles
                views = S.read_attrs(f)["views"]
                self._meta = {
                    "attrs": S.read_attrs(f),
                    "views": list(views),
                    "view_attrs": {v: S.read_attrs(f[f"{S.VIEWS_GROUP}/{v}"]) for v in views},
                }
        return self._meta

    @property
    def views(self) -> list[str]:
        return list(self._metadata()["views"])

    @property
    def attrs(self) -> dict[str, Any]:
        """File attributes of the first part (schema, sampling, code version, ...)."""
        return dict(self._metadata()["attrs"])

    def view_attrs(self, view: str) -> dict[str, Any]:
        """backbone, input_size, dim and everything recorded for the view (preprocessing...)."""
        return dict(self._view_meta(view))

    def _view_meta(self, view: str) -> dict[str, Any]:
        meta = self._metadata()["view_attrs"]
        if view not in meta:
            raise StoreError(f"view {view!r} is not in the store; it has {sorted(meta)}")
        return meta[view]

    @property
    def classes(self) -> list[str]:
        return sorted({label for labels in self._labels for label in labels})

    def video_ids(self, split: str | None = None) -> list[str]:
        if split is None:
            return list(self._ids)
        return [v for v, s in zip(self._ids, self._splits) if s == split]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._row

    def labels(self, video_id: str) -> list[str]:
        return list(self._labels[self._index(video_id)])

    def split(self, video_id: str) -> str:
        return self._splits[self._index(video_id)]

    def part_of(self, video_id: str) -> str:
        """Name of the part file holding the video (readers group reads by it)."""
        return self._loc[self._index(video_id)][0]

    def num_frames(self, video_id: str) -> int:
        return self._loc[self._index(video_id)][2]

    def _index(self, video_id: str) -> int:
        try:
            return self._row[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the store {self.path}") from None

    def stage_names(self, view: str) -> list[str]:
        return list(self._view_meta(view).get("stages", []))

    def stage_dims(self, view: str) -> dict[str, int]:
        """{stage: width} of the view's stored per-stage features (from the first part)."""
        names = self.stage_names(view)
        if not names:
            return {}
        first = min(p for p, _, _ in self._loc)
        self._adopt_after_fork()
        with self._lock:
            return {s: int(self._layout(first, f"{S.VIEWS_GROUP}/{view}/{S.STAGES_GROUP}/{s}")[1]
                           .shape[-1]) for s in names}

    # ---- arrays ----------------------------------------------------------------------------

    def read(self, video_id: str, view: str) -> np.ndarray:
        """Features of one video in one view, [T, D] float16."""
        self._view_meta(view)
        return self._rows(video_id, f"{S.VIEWS_GROUP}/{view}/{S.FEATURES}")

    def read_views(self, video_id: str, views: Sequence[str]) -> dict[str, np.ndarray]:
        return {v: self.read(video_id, v) for v in views}

    def read_logits(self, video_id: str, view: str) -> np.ndarray:
        """Per-frame logits [T, C] float16 (only for views extracted with logits)."""
        if "logits_dim" not in self._view_meta(view):
            raise StoreError(f"view {view!r} has no logits in this store")
        return self._rows(video_id, f"{S.VIEWS_GROUP}/{view}/{S.LOGITS}")

    def read_stages(self, video_id: str, view: str) -> dict[str, np.ndarray]:
        """Pooled per-stage features {stage: [T, Ds]} in stage order (empty if none stored)."""
        return {s: self._rows(video_id, f"{S.VIEWS_GROUP}/{view}/{S.STAGES_GROUP}/{s}")
                for s in self.stage_names(view)}

    def timestamps(self, video_id: str) -> np.ndarray:
        """Time in seconds of each row, [T] float64."""
        return self._rows(video_id, S.TIMESTAMPS)

    def iter_batches(
        self,
        views: Sequence[str],
        batch_size: int,
        split: str | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> Iterator[list[tuple[str, dict[str, np.ndarray]]]]:
        """Lists of (video_id, {view: [T, D]}); catalog order, or a seeded permutation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for v in views:
            self._view_meta(v)
        ids = self.video_ids(split)
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(ids))
            ids = [ids[i] for i in order]
        for start in range(0, len(ids), batch_size):
            yield [(vid, self.read_views(vid, views)) for vid in ids[start: start + batch_size]]

    # ---- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._adopt_after_fork()
        with self._lock:
            for h in self._handles.values():
                _close_handle(h)
            self._handles = OrderedDict()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, videos={len(self)})"

    def parts(self) -> list[str]:
        """Parts that hold at least one catalogued video."""
        return sorted(set(self.catalog.column("part").to_pylist()))

    def size_bytes(self) -> int:
        """Bytes on disk of parts and catalog (in object storage for a remote store)."""
        if self.part_cache is not None:
            return self.part_cache.remote_bytes()
        files = [self.path / S.CATALOG] + [self.path / S.PARTS_DIR / (p + S.PART_SUFFIX)
                                           for p in list_parts(self.path)]
        return sum(f.stat().st_size for f in files if f.exists())


class _Layout(NamedTuple):
    """Where a dataset's rows lie: `address` is the byte offset of row 0 when the rows are
    plain contiguous bytes of a native dtype (read with os.preadv), else None (read by HDF5)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    address: int | None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _scan_layout(f: h5py.File) -> dict[str, _Layout]:
    """The layout of every dataset a reader reads (timestamps and everything under views/)."""
    plain_file = f.driver == "sec2" and f.userblock_size == 0
    found: dict[str, _Layout] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and (name == S.TIMESTAMPS
                                              or name.startswith(S.VIEWS_GROUP + "/")):
            found[name] = _Layout(tuple(obj.shape), obj.dtype,
                                  _address(obj) if plain_file else None)

    f.visititems(visit)
    return found


def _all_plain(layout: dict[str, _Layout]) -> bool:
    return bool(layout) and all(d.address is not None for d in layout.values())


def _address(d: h5py.Dataset) -> int | None:
    if d.dtype.kind not in "fiu" or not d.dtype.isnative:
        return None
    if d.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
        return None
    address = d.id.get_offset()  # None when no storage is allocated
    return int(address) if address is not None else None


def _read_rows(h: int | h5py.File, path: str, d: _Layout, off: int, n: int) -> np.ndarray:
    """Rows off:off+n into a fresh array: os.preadv of plain bytes, else one HDF5 hyperslab
    read through the low-level API (h5py's slicing builds its selection in Python on every
    call; the low-level read is ~8x faster for a trainer's few-hundred-row reads,
    benchmarks/README.md)."""
    out = np.empty((n,) + d.shape[1:], dtype=d.dtype)
    if not n:
        return out
    if isinstance(h, int):
        want = n * d.row_bytes
        got = os.preadv(h, [out.reshape(-1).view(np.uint8)], d.address + off * d.row_bytes)
        if got != want:
            raise OSError(f"short read: {got} of {want} bytes (truncated file?)")
        return out
    dset = h[path]
    file_space = dset.id.get_space()
    file_space.select_hyperslab((off,) + (0,) * (len(d.shape) - 1), out.shape)
    dset.id.read(h5py.h5s.create_simple(out.shape), file_space, out)
    return out


def _close_handle(h: int | h5py.File) -> None:
    if isinstance(h, int):
        _close_fd(h)
    else:
        h.close()


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        log.debug("descriptor %d was already closed", fd)


__all__ = ["Store", "open_store"]
