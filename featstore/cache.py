"""A bounded local cache of store parts, so trainers can read a store kept in object storage.

`open_store('s3://bucket/store')` reads the catalog now and stages each part into
CACHE/<store digest>/parts/ on first use (HDF5 wants random access, which a local file gives at
full speed). After each download the least recently used parts (all stores in CACHE together)
are deleted until the cache is back under its size bound; the part just fetched is always kept,
and a part deleted while open stays readable to its open handles (POSIX), so the bound can be
exceeded by at most the parts open at that moment. Downloads are published atomically, so any
number of processes (DataLoader workers, Ray tasks) may share one cache folder.

Configured by arguments or the environment: C2F_STORE_CACHE (folder, default
~/.cache/c2f/stores) and C2F_STORE_CACHE_GB (bound in GB, default 20).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py

from featstore import schema as S
from featstore import storage
from featstore.catalog import build_catalog, list_parts, open_part
from featstore.schema import StoreError

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "C2F_STORE_CACHE"
CACHE_GB_ENV = "C2F_STORE_CACHE_GB"
DEFAULT_CACHE_GB = 20.0


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "c2f" / "stores")


def default_cache_bytes() -> int:
    text = os.environ.get(CACHE_GB_ENV)
    try:
        gb = float(text) if text else DEFAULT_CACHE_GB
    except ValueError:
        raise ValueError(f"{CACHE_GB_ENV} must be a number of GB, got {text!r}") from None
    if gb <= 0:
        raise ValueError(f"{CACHE_GB_ENV} must be > 0, got {text!r}")
    return int(gb * 1e9)


@dataclass(frozen=True)
class PartCache:
    """Local copies of one remote store's parts under `root`, all parts of every store under
    `root.parent` kept within `max_bytes`. Plain values only: it pickles into workers."""

    store_url: str
    root: Path
    max_bytes: int

    @classmethod
    def for_store(
        cls, store_url: str, cache_dir: str | os.PathLike | None = None,
        max_bytes: int | None = None,
    ) -> PartCache:
        digest = hashlib.sha256(store_url.rstrip("/").encode()).hexdigest()[:16]
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        bound = default_cache_bytes() if max_bytes is None else int(max_bytes)
        if bound <= 0:
            raise ValueError(f"cache bound must be > 0 bytes, got {bound}")
        return cls(store_url.rstrip("/"), folder / digest, bound)

    def fetch_catalog(self) -> Path:
        """Download the store's catalog (fresh on every open; built there if missing) into
        `root`, which then reads like a local store directory."""
        storage.check_access(self.store_url)
        remote = storage.join(self.store_url, S.CATALOG)
        if not storage.exists(remote):
            if not list_parts(self.store_url):
                raise StoreError(f"{self.store_url} has no parts and no catalog: not a "
                                 "feature store")
            log.warning("%s has no catalog.parquet; building it from the parts", self.store_url)
            build_catalog(self.store_url)
        (self.root / S.PARTS_DIR).mkdir(parents=True, exist_ok=True)
        storage.download(remote, self.root / S.CATALOG)
        return self.root

    def local_part(self, part: str) -> Path:
        return self.root / S.PARTS_DIR / (part + S.PART_SUFFIX)

    def ensure(self, part: str) -> Path:
        """The local copy of `part`, downloaded now if missing; marks it recently used."""
        local = self.local_part(part)
        if local.exists():
            try:
                os.utime(local)
                return local
            except FileNotFoundError:
                pass  # evicted by another process just now: fetch again
        remote = storage.join(self.store_url, S.PARTS_DIR, part + S.PART_SUFFIX)
        try:
            storage.download(remote, local)
        except FileNotFoundError as e:
            raise StoreError(f"part {part}: not found at {remote}") from e
        log.debug("staged %s into %s", remote, local)
        self.evict(keep=local)
        return local

    def open(self, part: str) -> h5py.File:
        """Open the local copy of `part`, fetching it again if it was evicted meanwhile."""
        try:
            return open_part(self.ensure(part))
        except FileNotFoundError:  # evicted by another process between ensure and open
            return open_part(self.ensure(part))

    def cached_parts(self) -> list[Path]:
        """Every cached part file of every store in this cache folder."""
        return [p for p in self.root.parent.glob(f"*/{S.PARTS_DIR}/*{S.PART_SUFFIX}")
                if not p.name.startswith(".")]

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used parts until the cache fits its bound; returns how many."""
        files = []
        for path in self.cached_parts():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if keep is not None and path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        if removed:
            log.info("part cache %s: evicted %d parts, %d bytes kept (bound %d)",
                     self.root.parent, removed, total, self.max_bytes)
        return removed

    def remote_bytes(self) -> int:
        """Size of the store in object storage: catalog plus every part."""
        parts = [storage.join(self.store_url, S.PARTS_DIR, p + S.PART_SUFFIX)
                 for p in list_parts(self.store_url)]
        return sum(storage.size(u) for u in [storage.join(self.store_url, S.CATALOG), *parts])
