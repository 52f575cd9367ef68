"""The one way a finished file appears: write a temporary name, fsync, rename, fsync the folder.

Every output of the project (shards, store parts, catalogs, manifests, checkpoints, run files)
goes through here, so a crash or a kill leaves either the old file, or the new one complete,
never a torn file under the final name — which is what lets every re-run trust what it finds.
It lives in `featstore` because that package is the leaf every other package may import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """A temporary sibling of `path` unique to this process (same folder, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """fsync the finished temporary file `tmp`, rename it to `final`, fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; publish it only if the block succeeds.

    For writers that want a file name (h5py, pyarrow, torch.save, tarfile): on an exception the
    temporary file is removed and `path` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))
