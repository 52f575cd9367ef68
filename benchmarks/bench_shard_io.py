"""Shard tar I/O through webdataset vs a plain tarfile pass over the same files.

Writes the same samples with the project's writer (webdataset's TarWriter, fixed headers) and
with Python's tarfile directly (same headers), checks the bytes are identical, then reads them
back with `pipeline.reader.read_shards` (webdataset.WebDataset + per-sample checks, frames not
decoded) and with a bare tarfile stream that only groups members by key. Payloads are random
bytes of JPEG size, so only tar and Python overheads are measured. Prints medians and ratios
from one run, side by side.

    python benchmarks/bench_shard_io.py --shards 4 --videos 32 --frames 30 --kb 8 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.reader import read_shards
from pipeline.shards import MEMBER_MODE, MEMBER_MTIME, open_tar_writer, sample_dict


def make_samples(videos: int, frames: int, kb: int, seed: int) -> list[list[tuple[str, bytes]]]:
    rng = np.random.default_rng(seed)
    samples = []
    for v in range(videos):
        key = f"{seed:02d}video{v:05d}"
        members = [(f"{key}.{i:04d}.jpg", rng.bytes(kb * 1024)) for i in range(frames)]
        meta = {"video_id": key, "num_frames": frames, "timestamps": list(range(frames))}
        members.append((f"{key}.json", json.dumps(meta).encode()))
        samples.append(sorted(members))
    return samples


def write_webdataset(path: Path, samples: list[list[tuple[str, bytes]]]) -> None:
    with open(path, "wb") as fh, open_tar_writer(fh) as tar:
        for members in samples:
            tar.write(sample_dict(members))


def write_tarfile(path: Path, samples: list[list[tuple[str, bytes]]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), MEMBER_MTIME, MEMBER_MODE
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def read_tarfile(paths: list[Path]) -> int:
    samples, key = 0, None
    for path in paths:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                this = member.name.split(".", 1)[0]
                tar.extractfile(member).read()
                if this != key:
                    samples, key = samples + 1, this
    return samples


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--videos", type=int, default=32, help="videos per shard")
    ap.add_argument("--frames", type=int, default=30, help="frames per video")
    ap.add_argument("--kb", type=int, default=8, help="KB per frame")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    data = [make_samples(args.videos, args.frames, args.kb, s) for s in range(args.shards)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "wds").mkdir()
        (root / "tar").mkdir()
        wds = [root / "wds" / f"shard-{i:06d}.tar" for i in range(args.shards)]
        raw = [root / "tar" / f"shard-{i:06d}.tar" for i in range(args.shards)]
        t_write_wds = timed(lambda: [write_webdataset(p, d) for p, d in zip(wds, data)],
                            args.repeats)
        t_write_tar = timed(lambda: [write_tarfile(p, d) for p, d in zip(raw, data)],
                            args.repeats)
        identical = all(a.read_bytes() == b.read_bytes() for a, b in zip(wds, raw))
        n = sum(1 for _ in read_shards(root / "wds", decode_frames=False))  # warm page cache
        assert n == read_tarfile(raw) == args.shards * args.videos
        t_read_wds = timed(lambda: sum(1 for _ in read_shards(root / "wds",
                                                              decode_frames=False)),
                           args.repeats)
        t_read_tar = timed(lambda: read_tarfile(raw), args.repeats)
        mb = sum(os.path.getsize(p) for p in wds) / 1e6
    print(f"{args.shards} shards x {args.videos} videos x {args.frames} frames x {args.kb} KB "
          f"= {mb:.1f} MB; medians of {args.repeats}; bytes identical: {identical}")
    print(f"{'step':<8}{'webdataset s':>14}{'tarfile s':>12}{'ratio':>8}{'wds MB/s':>10}")
    for step, a, b in (("write", t_write_wds, t_write_tar), ("read", t_read_wds, t_read_tar)):
        print(f"{step:<8}{a:>14.3f}{b:>12.3f}{a / b:>8.2f}{mb / a:>10.0f}")


if __name__ == "__main__":
    main()
