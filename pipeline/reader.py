"""Read shards written by pipeline/shards.py, one sample per video, streaming.

`iter_shard(path)` reads a tar front to back without extracting it (members of one sample are
consecutive, see docs/shards.md) and yields a ShardSample per video: its key, its json metadata,
its JPEG bytes in frame order and, unless `decode_frames=False`, the frames as RGB arrays.
Feature extraction iterates shards this way; plain `webdataset.WebDataset(urls)` reads the same
files too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/key.0003.jpg` -> (`key`, `0003.jpg`): the key ends at the first dot of the base
    name, the same rule WebDataset uses."""
    base = name.rsplit("/", 1)[-1]
    key, dot, ext = base.partition(".")
    if not dot:
        raise ValueError(f"tar member {name!r} has no extension")
    return key, ext


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


def iter_shard(tar_path: str | os.PathLike, decode_frames: bool = True) -> Iterator[ShardSample]:
    """Yield the samples of one shard in the order they were written (the manifest's order)."""
    source = str(tar_path)
    key: str | None = None
    parts: dict[str, bytes] = {}
    with tarfile.open(source, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = split_member_name(member.name)
            if key is not None and member_key != key:
                yield _build_sample(source, key, parts, decode_frames)
                parts = {}
            key = member_key
            if ext in parts:
                raise ValueError(f"{source}: member {member.name!r} appears twice")
            handle = tar.extractfile(member)
            assert handle is not None  # regular files always have a handle
            parts[ext] = handle.read()
    if key is not None:
        yield _build_sample(source, key, parts, decode_frames)


def shard_paths(paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A shard directory -> its `shard-*.tar` files in name order; a path or list -> as given."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        path = Path(paths_or_dir)
        if path.is_dir():
            found = sorted(path.glob(SHARD_GLOB))
            if not found:
                log.warning("no %s files in %s", SHARD_GLOB, path)
            return found
        return [path]
    return [Path(p) for p in paths_or_dir]


def read_shards(
    paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike], decode_frames: bool = True
) -> Iterator[ShardSample]:
    """Yield every sample of a shard directory (or of the given tar paths), shard by shard."""
    for path in shard_paths(paths_or_dir):
        yield from iter_shard(path, decode_frames=decode_frames)
