"""Per-video isolation for shard writing: decode each video in a reusable child process.

A single bad input must not stop or hang a shard: a file that makes the decoder spin, a named
pipe nobody writes to, a crash inside a native library. `DecodeWorker` keeps one child process
per shard and sends it one video at a time; the parent waits at most `timeout_s` for the answer.
On a timeout the child is killed (SIGKILL) and a fresh one is started for the next video; on a
crash the next video gets a fresh one too. Reusing the child keeps the normal-case cost to one
pipe round trip per video (the frames travel back already JPEG-encoded, a few KB each) plus one
interpreter start per shard.

The child is a fresh interpreter (`python -m pipeline.shard_worker`) talking pickles over its
stdin/stdout, not a multiprocessing fork or spawn: forking a threaded caller (a Ray worker)
can deadlock, and spawn/forkserver re-import the caller's main script in every child.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from featstore import storage
from pipeline.types import DecodeError, FrameFormat, SamplingPlan

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

_SOURCE_ROOT = str(Path(__file__).resolve().parents[1])
# Starting the child (interpreter + decoder imports) is not charged to the per-video timeout;
# it gets this long on its own, which only a broken installation or a frozen machine exceeds.
STARTUP_TIMEOUT_S = 120.0
# Video URLs handed to the decoder as they are (FFmpeg reads them); other schemes are staged.
STREAMED_SCHEMES = ("http", "https", "rtsp", "rtmp")


class WorkerStartError(RuntimeError):
    """The decoding child could not start: a broken environment, not a bad video, so the
    caller should fail the whole shard (and retry it later) rather than record video errors."""


@dataclass
class EncodedVideo:
    """What a shard stores for one video: JPEG bytes per frame, their timestamps in seconds,
    the decoder's info dict, and the stored frame size."""

    jpegs: list[bytes]
    timestamps: list[float]
    info: dict = field(default_factory=dict)
    width: int = 0
    height: int = 0


def _staged_prefix(pid: int) -> str:
    return f".c2f-video-{pid}-"


@contextmanager
def local_video(path: str) -> Iterator[str]:
    """A local file for `path`: the path itself, or for an object-storage URL a copy staged in
    the staging folder (C2F_STAGING_DIR) for the time of one decode, so at most one video per
    decoding child is ever on local disk (decoders, DALI included, want a file). URLs FFmpeg
    streams itself (http, rtsp, …) are passed through."""
    if storage.scheme(path) in (None, *STREAMED_SCHEMES):
        yield path
        return
    suffix = "-" + path.rsplit("/", 1)[-1][-80:]
    fd, name = tempfile.mkstemp(dir=storage.staging_dir(), prefix=_staged_prefix(os.getpid()),
                                suffix=suffix)
    os.close(fd)
    try:
        try:
            storage.download(path, name)
        except OSError as exc:
            raise DecodeError("open", f"cannot fetch {path}: {exc}") from exc
        yield name
    finally:
        Path(name).unlink(missing_ok=True)


def remove_staged(pid: int) -> None:
    """Delete videos a killed child `pid` had staged (it could not clean up itself)."""
    folder = storage.staging_dir()
    for leftover in folder.glob(_staged_prefix(pid) + "*"):
        leftover.unlink(missing_ok=True)


def decode_and_encode(
    path: str, sampling: SamplingPlan, fmt: FrameFormat, backend: str
) -> EncodedVideo:
    """Decode one video and JPEG-encode its frames; the work one child does per request.

    Raises DecodeError for any failure so the caller records one clear error row per video.
    """
    from pipeline.decode import decode_video
    from pipeline.imageops import encode_jpeg

    with local_video(path) as local:
        video = decode_video(local, sampling, fmt, backend=backend)
    if not video.frames:
        raise DecodeError("decode", "no frames decoded")
    height, width = video.frames[0].shape[:2]
    try:
        jpegs = [encode_jpeg(frame, fmt.jpeg_quality) for frame in video.frames]
    except (OSError, ValueError) as exc:
        raise DecodeError("encode", f"JPEG encoding failed: {exc}") from exc
    return EncodedVideo(
        jpegs=jpegs,
        timestamps=[float(t) for t in video.timestamps],
        info=dict(video.info),
        width=int(width),
        height=int(height),
    )


def _serve(requests: Connection, replies: Connection) -> None:
    """Child loop: answer each (path, sampling, fmt, backend) request until told to stop."""
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        if request is None:
            return
        path, sampling, fmt, backend = request
        try:
            reply = ("ok", decode_and_encode(path, sampling, fmt, backend))
        except DecodeError as exc:
            reply = ("error", exc.stage, exc.reason)
        except Exception as exc:  # any decoder bug must become an error row, not a lost shard
            log.exception("unexpected failure decoding %s", path)
            reply = ("error", "decode", f"{type(exc).__name__}: {exc}")
        replies.send(reply)


def main() -> None:
    """Entry point of the child: requests on stdin, replies on stdout, logs on stderr."""
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray writes to stdout (C libraries, print) must not corrupt replies
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="decode worker: %(levelname)s %(message)s")
    decode = importlib.import_module("pipeline.decode")  # load decoders before "ready"
    importlib.import_module("pipeline.imageops")
    if "--probe-gpu" in sys.argv[1:]:
        decode.gpu_visible()  # imports torch and DALI once, outside any video's timeout
    replies.send(("ready",))
    _serve(requests, replies)


class DecodeWorker:
    """One reusable decoding child with a per-video timeout; use as a context manager."""

    def __init__(self, timeout_s: float = 120.0, probe_gpu: bool = False) -> None:
        """`probe_gpu=True` (for the `auto` and `dali` backends) makes the child look for a GPU
        while starting, so the seconds that takes are not charged to the first video."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.probe_gpu = probe_gpu
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the current decoding child (None before the first video)."""
        return None if self._process is None else self._process.pid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.shard_worker", *(["--probe-gpu"] * self.probe_gpu)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert process.stdin is not None and process.stdout is not None
        self._send = Connection(os.dup(process.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()
        self._process = process
        if not self._recv.poll(STARTUP_TIMEOUT_S):
            self._kill()
            raise WorkerStartError(f"decoder process not ready within {STARTUP_TIMEOUT_S:g} s")
        try:
            self._recv.recv()
        except (EOFError, OSError) as exc:
            code = process.wait()
            self._kill()
            raise WorkerStartError(
                f"decoder process failed to start (exit code {code}); its stderr says why"
            ) from exc

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            remove_staged(self._process.pid)
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._process, self._send, self._recv = None, None, None

    def run(
        self, path: str, sampling: SamplingPlan, fmt: FrameFormat, backend: str = "auto"
    ) -> EncodedVideo:
        """Decode `path` in the child; raise DecodeError (stage `timeout` or `worker` for
        a hung or crashed child) so every failure is one error row. Raises WorkerStartError
        when no child can be started at all."""
        if self._process is None or self._process.poll() is not None:
            if self._process is not None:
                self._kill()
                self.restarts += 1
            self._start()
        assert self._send is not None and self._recv is not None
        try:
            self._send.send((str(path), sampling, fmt, backend))
        except OSError:
            pass  # the child died between requests; recv below reports it
        if not self._recv.poll(self.timeout_s):
            log.warning("decoding %s took over %.1f s; killing the decoder", path, self.timeout_s)
            self._kill()
            self.restarts += 1
            raise DecodeError(
                "timeout", f"no result within {self.timeout_s:g} s; decoder process killed"
            )
        try:
            reply = self._recv.recv()
        except (EOFError, OSError) as exc:
            code = None
            if self._process is not None:
                try:
                    code = self._process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    code = None
            self._kill()
            self.restarts += 1
            raise DecodeError("worker", f"decoder process died (exit code {code})") from exc
        if reply[0] == "ok":
            return reply[1]
        raise DecodeError(reply[1], reply[2])

    def close(self) -> None:
        """Stop the child politely, or kill it if it does not stop within a second."""
        if self._process is None:
            return
        try:
            if self._send is not None:
                self._send.send(None)
            self._process.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            log.debug("decoder process did not stop by itself; killing it")
        self._kill()


if __name__ == "__main__":
    # Run the importable copy of this module, so replies pickle as pipeline.shard_worker types
    # rather than __main__ types the parent cannot load.
    importlib.import_module("pipeline.shard_worker").main()
