"""Feature read throughput for a trainer: the store vs one .pth / one .npy file per video.

Generates N videos of T ~ U[T/2, 3T/2] frames with a coarse (D=1280) and a fine (D=2048) view,
float16 random features (the same arrays in every layout), writes them as
  * a feature store (parts of 200 videos),
  * LiteEval's layout: coarse/<video>.pth and fine/<video>.pth, each torch.save({'fea': tensor}),
  * one <video>.npy per view,
then reads every video's coarse and fine [T, D] in a random order. The page cache cannot be
dropped here, so each reader runs once to warm up and is then timed 3 times: the table shows
the median of the 3 warm passes. Usage:
    python benchmarks/bench_featstore.py [--videos 2000] [--frames 100] [--dir /tmp/bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from featstore import StoreWriter, ViewSpec, build_catalog, open_store

DIMS = {"coarse": 1280, "fine": 2048}
PART_VIDEOS = 200


def video_data(i: int, frames: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    t = int(rng.integers(frames // 2, frames * 3 // 2 + 1))
    return {v: rng.standard_normal((t, d), dtype=np.float32).astype(np.float16)
            for v, d in DIMS.items()}


def write_all(root: Path, n: int, frames: int) -> dict[str, Path]:
    dirs = {"store": root / "store", "pth": root / "pth", "npy": root / "npy"}
    for layout in ("pth", "npy"):
        for v in DIMS:
            (dirs[layout] / v).mkdir(parents=True, exist_ok=True)
    views = {v: ViewSpec(dim=d, backbone="bench", input_size=0) for v, d in DIMS.items()}
    writer: StoreWriter | None = None
    for i in range(n):
        vid = f"video{i:06d}"
        data = video_data(i, frames)
        if i % PART_VIDEOS == 0:
            if writer is not None:
                writer.close()
            writer = StoreWriter(dirs["store"], f"part-{i // PART_VIDEOS:06d}", views)
        writer.add_video(vid, ["x"], "train", np.arange(len(data["coarse"]), dtype=float), data)
        for v, arr in data.items():
            torch.save({"fea": torch.from_numpy(arr)}, dirs["pth"] / v / f"{vid}.pth")
            np.save(dirs["npy"] / v / f"{vid}.npy", arr)
    if writer is not None:
        writer.close()
    build_catalog(dirs["store"])
    return dirs


def du(path: Path) -> int:
    """Bytes allocated on disk (st_blocks), which counts each small file's partial block."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def apparent(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def reader_store(path: Path) -> Callable[[str], list[np.ndarray]]:
    store = open_store(path)
    return lambda vid: [store.read(vid, v) for v in DIMS]


def reader_pth(path: Path) -> Callable[[str], list[np.ndarray]]:
    return lambda vid: [torch.load(path / v / f"{vid}.pth", weights_only=True)["fea"].numpy()
                        for v in DIMS]


def reader_npy(path: Path) -> Callable[[str], list[np.ndarray]]:
    return lambda vid: [np.load(path / v / f"{vid}.npy") for v in DIMS]


def timed_pass(read: Callable[[str], list[np.ndarray]], ids: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    nbytes = 0
    for vid in ids:
        nbytes += sum(a.nbytes for a in read(vid))
    return time.perf_counter() - start, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=100, help="mean frames per video")
    ap.add_argument("--dir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_featstore_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        dirs = write_all(root, args.videos, args.frames)
        print(f"generated {args.videos} videos in {time.perf_counter() - t0:.1f} s under {root}")
        ids = [f"video{i:06d}" for i in range(args.videos)]
        order = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]
        readers = {"store": reader_store, "pth": reader_pth, "npy": reader_npy}
        rows = []
        for name, make in readers.items():
            read = make(dirs[name])
            timed_pass(read, order)  # warm-up pass: fills the page cache
            runs = [timed_pass(read, order) for _ in range(3)]
            secs = statistics.median(r[0] for r in runs)
            mb = runs[0][1] / 1e6
            rows.append((name, args.videos / secs, mb / secs, du(dirs[name]) / 1e6,
                         apparent(dirs[name]) / 1e6))
        base = {r[0]: r[1] for r in rows}
        print(f"\n{args.videos} videos, mean T={args.frames}, views coarse D=1280 + fine D=2048 "
              f"float16, random order, warm page cache, median of 3 passes, "
              f"{os.cpu_count()} cpus (load average {os.getloadavg()[0]:.1f}), 1 reader thread")
        print("| layout | videos/s | MB/s | x vs pth | x vs npy | MB on disk (allocated) "
              "| MB (file sizes) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, vps, mbs, size, sizes in rows:
            print(f"| {name} | {vps:.0f} | {mbs:.0f} | {vps / base['pth']:.2f} | "
                  f"{vps / base['npy']:.2f} | {size:.1f} | {sizes:.1f} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
