"""Read shards written by pipeline/shards.py, one sample per video, streaming, via webdataset.

`iter_shard(url)` streams one tar through `webdataset.WebDataset` (so a shard may be a local
path, a `pipe:` command, an http(s) URL or an object-storage URL such as `s3://…`) and yields a
ShardSample per video: its key, its json metadata, its JPEG bytes in frame order and, unless
`decode_frames=False`, the frames as RGB arrays. Feature extraction iterates shards this way.
Object-storage schemes webdataset has no opener for are served by featstore.storage.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import IO

import numpy as np

from featstore import storage
from pipeline.imageops import decode_jpeg

log = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.tar"
_FRAME_EXT = re.compile(r"^(\d{4,})\.jpg$")


@dataclass
class ShardSample:
    """One video of a shard: `meta` is its `<key>.json`; `jpegs` and `frames` are in frame
    order (`frames` is None when the reader was asked not to decode)."""

    key: str
    meta: dict
    jpegs: list[bytes]
    frames: list[np.ndarray] | None


def _build_sample(
    source: str, key: str, parts: dict[str, bytes], decode_frames: bool
) -> ShardSample:
    if "json" not in parts:
        raise ValueError(f"{source}: sample {key!r} has no {key}.json member")
    meta = json.loads(parts["json"])
    numbered = []
    for ext, data in parts.items():
        match = _FRAME_EXT.match(ext)
        if match:
            numbered.append((int(match.group(1)), data))
    numbered.sort()
    if [i for i, _ in numbered] != list(range(len(numbered))):
        raise ValueError(f"{source}: sample {key!r} has gaps in its frame numbers")
    if len(numbered) != meta.get("num_frames"):
        raise ValueError(
            f"{source}: sample {key!r} holds {len(numbered)} frames, its json says "
            f"{meta.get('num_frames')}"
        )
    jpegs = [data for _, data in numbered]
    frames = [decode_jpeg(data) for data in jpegs] if decode_frames else None
    return ShardSample(key=key, meta=meta, jpegs=jpegs, frames=frames)


def _open_with_storage(url: str, mode: str = "rb", bufsize: int = 8192, **_: object) -> IO:
    """A webdataset `gopen` handler for schemes it lacks, reading through featstore.storage."""
    if mode != "rb":
        raise ValueError(f"{url}: shards are read-only here (mode {mode!r})")
    return storage.open_stream(url)


def _webdataset(urls: list[str]) -> Iterable[dict]:
    """Plain samples of the given shards, in order: no shard shuffling, no splitting between
    nodes or DataLoader workers (callers decide who reads which shard)."""
    import webdataset  # imports torch: keep it out of `c2f --help`
    from webdataset.gopen import gopen_schemes

    for url in urls:
        kind = storage.scheme(url)
        if kind is not None and kind not in gopen_schemes:
            gopen_schemes[kind] = _open_with_storage
    return webdataset.WebDataset(urls, shardshuffle=False, nodesplitter=None,
                                 workersplitter=None, empty_check=False)


def _samples(urls: list[str], decode_frames: bool) -> Iterator[ShardSample]:
    for raw in _webdataset(urls):
        parts = {k: v for k, v in raw.items() if not k.startswith("__")}
        yield _build_sample(raw["__url__"], raw["__key__"], parts, decode_frames)


def iter_shard(url: str | os.PathLike, decode_frames: bool = True) -> Iterator[ShardSample]:
    """Yield the samples of one shard in the order they were written (the manifest's order)."""
    yield from _samples([str(url)], decode_frames)


def list_shards(shards_dir: str | os.PathLike) -> list[str]:
    """The `shard-*.tar` files of a shard folder (local or a URL) in name order; [] if none."""
    return [storage.join(shards_dir, name) for name in storage.list_names(shards_dir)
            if fnmatch(name, SHARD_GLOB)]


def _is_folder(url: str) -> bool:
    """A shard folder to list; False for `pipe:` commands and URLs no filesystem here knows
    (http, …), which webdataset opens itself."""
    if url.startswith("pipe:"):
        return False
    try:
        return storage.is_dir(url)
    except storage.StorageError:
        return False


def shard_paths(paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """A shard directory (local or URL) -> its `shard-*.tar` files in name order; a path, URL
    or `pipe:` command, or a list of them -> as given."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        text = str(paths_or_dir)
        if _is_folder(text):
            found = list_shards(text)
            if not found:
                log.warning("no %s files in %s", SHARD_GLOB, text)
            return found
        return [text]
    return [str(p) for p in paths_or_dir]


def read_shards(
    paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike], decode_frames: bool = True
) -> Iterator[ShardSample]:
    """Yield every sample of a shard directory (or of the given shards), shard by shard."""
    urls = shard_paths(paths_or_dir)
    if urls:
        yield from _samples(urls, decode_frames)
