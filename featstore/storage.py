"""Where files live: a local folder or object storage (`s3://bucket/key`), behind a few calls.

Every input and output of the project (manifests, videos, shards, index/errors parquet, store
parts, catalogs) may be a local path or a URL. The filesystem layer is `pyarrow.fs`: it is
already a dependency, its S3 client is native (no extra Python stack), parquet reads and writes
go through it directly, and any other scheme fsspec resolves is wrapped with `FSSpecHandler`.

Finished files appear only when complete. Locally that is featstore/atomic.py (temp name, fsync,
rename). On object storage a file is written to a local temp and uploaded in one go; S3 makes an
object visible only when its (multipart) upload completes, so a killed writer leaves nothing
under the final name and a re-run skips exactly what was published.

S3 settings come from the standard AWS variables: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for
an S3-compatible server, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), and
AWS_REGION (or AWS_DEFAULT_REGION). Local temps for uploads go to C2F_STAGING_DIR (default: the
system temp folder).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from featstore import atomic

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
STAGING_ENV = "C2F_STAGING_DIR"


class StorageError(OSError, ValueError):
    """Object storage cannot be used as asked (missing bucket, refused credentials, no such
    scheme). Both an OSError (it is about I/O) and a ValueError (it is bad input found before
    any work), so commands report it with their usual exit code for bad input."""


def scheme(url: str | os.PathLike[str]) -> str | None:
    """`s3` for `s3://b/k`; None for a local path (also for `file://` URLs)."""
    match = _SCHEME.match(str(url))
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_remote(url: str | os.PathLike[str]) -> bool:
    """True for object-storage URLs (`s3://…`, `gs://…`, …); False for local paths."""
    return scheme(url) is not None


def local_path(url: str | os.PathLike[str]) -> Path:
    """A local path, accepting `file://` URLs."""
    text = str(url)
    return Path(text.removeprefix("file://"))


def join(url: str | os.PathLike[str], *names: str) -> str:
    """`join('s3://b/dir', 'x.tar')` -> `s3://b/dir/x.tar`; local paths join as paths."""
    if not is_remote(url):
        return str(local_path(url).joinpath(*names))
    return "/".join([str(url).rstrip("/"), *(n.strip("/") for n in names)])


def absolute(url: str | os.PathLike[str]) -> str:
    """URLs unchanged; local paths made absolute (Ray workers may run in another folder)."""
    return str(url) if is_remote(url) else str(local_path(url).resolve())


def _env(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _s3_filesystem() -> pafs.FileSystem:
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    options: dict = {"region": _env("AWS_REGION", "AWS_DEFAULT_REGION")}
    if endpoint:
        match = re.match(r"^(https?)://(.+?)/?$", endpoint)
        if match is None:
            raise StorageError(f"AWS_ENDPOINT_URL must look like http(s)://host:port, got "
                               f"{endpoint!r}")
        options.update(scheme=match.group(1), endpoint_override=match.group(2))
    return pafs.S3FileSystem(**options)


_S3_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
_filesystems: dict[tuple, pafs.FileSystem] = {}


def resolve(url: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that holds `url` and the path inside it.

    One filesystem per scheme, process (clients are not shared across forks) and AWS settings
    (a changed endpoint or key makes a new client); s3 is built from the AWS variables, other
    schemes through pyarrow, then fsspec.
    """
    kind = scheme(url)
    if kind is None:
        return pafs.LocalFileSystem(), str(local_path(url).resolve())
    text = str(url)
    key = (os.getpid(), kind, *(os.environ.get(name) for name in _S3_SETTINGS))
    fs = _filesystems.get(key)
    if fs is None:
        if kind in ("s3", "s3a"):
            fs = _s3_filesystem()
        else:
            fs = _other_filesystem(text)
        _filesystems[key] = fs
    return fs, text[len(kind) + 3:].rstrip("/")


def _other_filesystem(url: str) -> pafs.FileSystem:
    try:
        return pafs.FileSystem.from_uri(url)[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as arrow_error:
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            return PyFileSystem(FSSpecHandler(fsspec.core.url_to_fs(url)[0]))
        except (ImportError, ValueError) as fsspec_error:
            raise StorageError(f"{url}: no filesystem for this scheme (pyarrow: {arrow_error}; "
                               f"fsspec: {fsspec_error})") from fsspec_error


def _wrap(url: str | os.PathLike[str], what: str, error: OSError) -> StorageError:
    hint = ""
    text = str(error)
    if any(s in text for s in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                               "403", "credentials")):
        hint = (" — the credentials were refused: check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an S3-compatible server)")
    elif "NETWORK_CONNECTION" in text or "resolve host" in text:
        hint = " — the server cannot be reached: check AWS_ENDPOINT_URL / AWS_REGION"
    return StorageError(f"{what} {url}: {text}{hint}")


def check_access(url: str | os.PathLike[str]) -> None:
    """Fail now, with a clear StorageError, if `url`'s bucket is missing or the credentials are
    refused — before a command starts any work. Local paths always pass."""
    if not is_remote(url):
        return
    fs, path = resolve(url)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise _wrap(url, "cannot use", e) from e
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"cannot use {url}: bucket {bucket!r} does not exist "
                           f"(create it first, or check AWS_ENDPOINT_URL)")


def _info(url: str | os.PathLike[str]) -> pafs.FileInfo:
    fs, path = resolve(url)
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise _wrap(url, "cannot look up", e) from e


def exists(url: str | os.PathLike[str]) -> bool:
    if not is_remote(url):
        return local_path(url).exists()
    return _info(url).type != pafs.FileType.NotFound


def is_dir(url: str | os.PathLike[str]) -> bool:
    if not is_remote(url):
        return local_path(url).is_dir()
    return _info(url).type == pafs.FileType.Directory


def size(url: str | os.PathLike[str]) -> int:
    if not is_remote(url):
        return local_path(url).stat().st_size
    info = _info(url)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{url} not found")
    return int(info.size)


def list_names(url: str | os.PathLike[str]) -> list[str]:
    """Names of the files directly inside a folder, sorted; [] if the folder does not exist."""
    if not is_remote(url):
        folder = local_path(url)
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    fs, path = resolve(url)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise _wrap(url, "cannot list", e) from e
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def read_bytes(url: str | os.PathLike[str]) -> bytes:
    if not is_remote(url):
        return local_path(url).read_bytes()
    fs, path = resolve(url)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _wrap(url, "cannot read", e) from e


def read_text(url: str | os.PathLike[str]) -> str:
    return read_bytes(url).decode("utf-8")


def open_input(url: str | os.PathLike[str]) -> IO[bytes]:
    """A seekable binary reader (ranged reads on object storage)."""
    if not is_remote(url):
        return open(local_path(url), "rb")
    fs, path = resolve(url)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _wrap(url, "cannot open", e) from e


def open_stream(url: str | os.PathLike[str]) -> IO[bytes]:
    """A sequential binary reader (one streaming GET on object storage)."""
    if not is_remote(url):
        return open(local_path(url), "rb")
    fs, path = resolve(url)
    try:
        return fs.open_input_stream(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _wrap(url, "cannot open", e) from e


def download(url: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy `url` to the local file `dest`, published atomically (no half file under `dest`)."""
    dest = Path(dest)
    with atomic.atomic_path(dest) as tmp, open(tmp, "wb") as out, open_stream(url) as src:
        while chunk := src.read(8 << 20):
            out.write(chunk)
    return dest


def staging_dir() -> Path:
    """Folder for local temps of remote outputs and staged inputs (C2F_STAGING_DIR)."""
    folder = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def output_path(url: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a local temporary path to write `url` through; publish it only if the block
    succeeds: renamed into place locally, uploaded (visible only when complete) remotely."""
    if not is_remote(url):
        with atomic.atomic_path(local_path(url)) as tmp:
            yield tmp
        return
    fd, name = tempfile.mkstemp(dir=staging_dir(), prefix=".c2f-upload-",
                                suffix="-" + str(url).rsplit("/", 1)[-1])
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        upload(tmp, url)
    finally:
        tmp.unlink(missing_ok=True)


def upload(local: str | os.PathLike[str], url: str | os.PathLike[str]) -> None:
    """Copy a finished local file to `url` in one upload."""
    fs, path = resolve(url)
    try:
        pafs.copy_files(str(local), path, destination_filesystem=fs)
    except OSError as e:
        raise _wrap(url, "cannot upload", e) from e


def write_bytes(url: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace `url` with `data` (local or remote)."""
    with output_path(url) as tmp:
        tmp.write_bytes(data)


def delete(url: str | os.PathLike[str]) -> None:
    """Remove the file at `url` if it exists (local or remote)."""
    if not is_remote(url):
        local_path(url).unlink(missing_ok=True)
        return
    fs, path = resolve(url)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _wrap(url, "cannot delete", e) from e


def read_parquet(url: str | os.PathLike[str], **kwargs) -> pa.Table:
    """pq.read_table from a local path or a URL."""
    if not is_remote(url):
        return pq.read_table(local_path(url), **kwargs)
    fs, path = resolve(url)
    try:
        return pq.read_table(path, filesystem=fs, **kwargs)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _wrap(url, "cannot read", e) from e


def write_parquet(table: pa.Table, url: str | os.PathLike[str], **kwargs) -> None:
    """pq.write_table through a temp that is published only when written."""
    with output_path(url) as tmp:
        pq.write_table(table, tmp, **kwargs)
