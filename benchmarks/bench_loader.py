"""The trainers' loader at real widths with the cache off: throughput vs raw reads, and the
share of a LiteEval step spent waiting for data.

Writes a store of `--videos` videos (T uniform in [T/2, 3T/2], mean `--frames`; FCVID's mean at
1 fps is 167) with coarse D=1280 (MobileNetV2) and fine D=2048 (ResNet-101) float16 features,
64 videos per part (one FCVID-sized shard each). Then, each pass starting from a cold page
cache (sync, then posix_fadvise(POSIX_FADV_DONTNEED) on every part file: it evicts only these
files, where drop_caches would evict every job's cache on a shared machine; the "warm" column
shows what a cached pass reads), interleaved, `--repeats` times:

* raw: the same bytes the loader reads, in the loader's epoch order, read with os.preadv into
  a fresh buffer per view and video from the same files (dataset offsets from HDF5);
* Store.read_views: the store's own per-video reads in the same order (float16 arrays);
* loader: `make_loader(..., cache=False)` with its defaults (prefetch 2 batches in a thread,
  shuffle in blocks of 4 videos of one part), iterated to the end with nothing to compute;
* loader, no prefetch; loader, no prefetch and a plain shuffle (block 1): what each adds.

Throughput is feature MB/s (float16 bytes read); medians. The loader's batches are float16
(copied as stored), zero-padded to the longest video of the batch; `Batch.to` casts them to
float32 in the step. Then LiteEval is trained through
`trainers.train.train` with `cache="off"` on `--train-videos` of the store after dropping the
cache again, and the data share data_time / (data_time + compute_time) is read from the run's
metrics.jsonl (data_time: the step waiting for the loader). Usage:

    python benchmarks/bench_loader.py [--videos 2000] [--frames 167] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from featstore import StoreWriter, ViewSpec, build_catalog, open_store
from featstore import schema as S
from trainers import liteeval
from trainers.config import RunConfig
from trainers.data import make_loader
from trainers.train import train

DIMS = {"coarse": 1280, "fine": 2048}
BACKBONES = {"coarse": ("mobilenet_v2", 112), "fine": ("resnet101", 224)}
PART_VIDEOS = 64
CLASSES = 239


def write_store(store: Path, videos: int, frames: int, train_videos: int) -> int:
    """Random float16 features (rows drawn from a random pool: content does not matter to I/O);
    the first `train_videos` of a seeded permutation are 'train', 16 each 'val' and 'test',
    the rest 'pool'. Returns the feature bytes written."""
    rng = np.random.default_rng(0)
    pool = {v: rng.standard_normal((4096, d), dtype=np.float32).astype(np.float16)
            for v, d in DIMS.items()}
    role = np.full(videos, "pool", dtype=object)
    chosen = rng.permutation(videos)
    role[chosen[:train_videos]] = "train"
    role[chosen[train_videos: train_videos + 16]] = "val"
    role[chosen[train_videos + 16: train_videos + 32]] = "test"
    views = {v: ViewSpec(dim=d, backbone=BACKBONES[v][0], input_size=BACKBONES[v][1],
                         attrs={"benchmark": "random features"}) for v, d in DIMS.items()}
    total = 0
    for start in range(0, videos, PART_VIDEOS):
        with StoreWriter(store, f"shard-{start // PART_VIDEOS:06d}", views) as w:
            for i in range(start, min(start + PART_VIDEOS, videos)):
                t = int(rng.integers(frames // 2, frames * 3 // 2 + 1))
                rows = (int(rng.integers(0, 4096)) + np.arange(t)) % 4096
                feats = {v: pool[v][rows] for v in DIMS}
                total += sum(a.nbytes for a in feats.values())
                w.add_video(f"video{i:06d}", [f"class{i % CLASSES:03d}"], str(role[i]),
                            np.arange(t, dtype=np.float64), feats)
    build_catalog(store)
    return total


def drop_page_cache(files: list[Path]) -> str:
    """Evict these files' pages from the page cache (only theirs: the machine is shared)."""
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "posix_fadvise(POSIX_FADV_DONTNEED) on every part after sync"


def raw_plan(store, ids: list[str]) -> list[tuple[str, int, int]]:
    """(part file, byte offset, byte count) of every view of every video, in `ids` order."""
    where: dict[tuple[str, str], int] = {}
    for part in store.parts():
        with h5py.File(store.path / S.PARTS_DIR / (part + S.PART_SUFFIX), "r",
                       locking=False) as f:
            for v in DIMS:
                where[part, v] = f[f"{S.VIEWS_GROUP}/{v}/{S.FEATURES}"].id.get_offset()
    cat = store.catalog.to_pydict()
    row = {vid: (p, o, n) for vid, p, o, n in zip(cat["video_id"], cat["part"], cat["offset"],
                                                  cat["length"])}
    plan = []
    for vid in ids:
        part, off, n = row[vid]
        for v, d in DIMS.items():
            plan.append((part, where[part, v] + off * d * 2, n * d * 2))
    return plan


def read_raw(store_dir: Path, plan: list[tuple[str, int, int]]) -> int:
    fds = {}
    total = 0
    try:
        for part, offset, nbytes in plan:
            fd = fds.get(part)
            if fd is None:
                fd = fds[part] = os.open(store_dir / S.PARTS_DIR / (part + S.PART_SUFFIX),
                                         os.O_RDONLY)
            buf = np.empty(nbytes, dtype=np.uint8)
            total += os.preadv(fd, [buf], offset)
    finally:
        for fd in fds.values():
            os.close(fd)
    return total


def read_store(store, ids: list[str]) -> int:
    """`Store.read_views` of every video in `ids` order: the store's reads without batching."""
    total = 0
    for vid in ids:
        total += sum(a.nbytes for a in store.read_views(vid, list(DIMS)).values())
    return total


def read_loader(store, batch_size: int, prefetch: int, block: int) -> int:
    loader = make_loader(store, list(DIMS), None, batch_size, True, seed=0, cache=False,
                         prefetch=prefetch, block=block)
    total = 0
    for batch in loader:
        total += int(batch.lengths.sum()) * sum(DIMS.values()) * 2
    return total


def liteeval_share(root: Path, store_dir: Path, files: list[Path], args) -> list[dict]:
    """Train LiteEval (cache off, cold page cache) and sum the step records of each epoch."""
    rows = []
    for hidden in args.liteeval_hidden:
        coarse, fine = (int(x) for x in hidden.split("/"))
        run = root / f"run-{coarse}-{fine}"
        drop_page_cache(files)
        cfg = RunConfig(method="liteeval", store=str(store_dir), out=str(run), epochs=2,
                        batch_size=args.liteeval_batch, lr=1e-4, seed=0, eval_split="test",
                        cache="off", threads=args.threads,
                        method_config=liteeval.Config(coarse_hidden=coarse, fine_hidden=fine,
                                                      gamma=0.05))
        train(cfg, stop_after_epochs=1)
        data = compute = 0.0
        steps = 0
        for line in (run / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "step":
                steps += 1
                data += rec["data_time"]
                compute += rec["compute_time"]
        rows.append({"hidden": hidden, "steps": steps, "data": data, "compute": compute})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=167, help="mean frames per video")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-videos", type=int, default=64,
                        help="videos in the LiteEval run's train split")
    parser.add_argument("--liteeval-batch", type=int, default=16, help="LiteEval batch size")
    parser.add_argument("--liteeval-hidden", nargs="*", default=["512/2048", "64/128"],
                        metavar="COARSE/FINE", help="LiteEval LSTM sizes to train (FCVID: "
                        "512/2048, LiteEval sec. 4.1; a small one makes the step short); "
                        "none given: no training")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the generated store")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=args.dir))
    store_dir = root / "store"
    try:
        t0 = time.perf_counter()
        nbytes = write_store(store_dir, args.videos, args.frames, args.train_videos)
        files = sorted((store_dir / S.PARTS_DIR).glob("*" + S.PART_SUFFIX))
        print(f"store: {args.videos} videos, mean {args.frames} frames, D=1280+2048 float16, "
              f"{len(files)} parts, {nbytes / 1e9:.2f} GB of features, "
              f"{sum(f.stat().st_size for f in files) / 1e9:.2f} GB on disk "
              f"({time.perf_counter() - t0:.0f} s to write) in {root}")
        store = open_store(store_dir)
        order = make_loader(store, list(DIMS), None, args.batch_size, True, seed=0).order(0)
        ordered = [store.video_ids()[i] for i in order]
        plan = raw_plan(store, ordered)
        methods = {
            "raw preadv, loader order": lambda: read_raw(store_dir, plan),
            "Store.read_views, loader order": lambda: read_store(store, ordered),
            "loader (prefetch 2, block 4)": lambda: read_loader(store, args.batch_size, 2, 4),
            "loader, no prefetch (block 4)": lambda: read_loader(store, args.batch_size, 0, 4),
            "loader, no prefetch, block 1": lambda: read_loader(store, args.batch_size, 0, 1),
        }
        times: dict[str, list[float]] = {m: [] for m in methods}
        warm: dict[str, float] = {}
        how = ""
        for _ in range(args.repeats):
            for name, fn in methods.items():
                store.close()
                how = drop_page_cache(files)
                t0 = time.perf_counter()
                got = fn()
                times[name].append(time.perf_counter() - t0)
                if got != nbytes:
                    raise RuntimeError(f"{name} read {got} bytes, expected {nbytes}")
        for name in ("raw preadv, loader order", "Store.read_views, loader order",
                     "loader (prefetch 2, block 4)"):
            t0 = time.perf_counter()
            methods[name]()
            warm[name] = time.perf_counter() - t0
        raw = statistics.median(times["raw preadv, loader order"])
        print(f"cold page cache via {how}; medians of {args.repeats} interleaved passes; "
              f"torch threads {args.threads}")
        print("| reader | cold s | cold MB/s | x raw | warm MB/s |")
        print("|---|---:|---:|---:|---:|")
        for name, ts in times.items():
            med = statistics.median(ts)
            w = f"{nbytes / warm[name] / 1e6:.0f}" if name in warm else "-"
            print(f"| {name} | {med:.2f} | {nbytes / med / 1e6:.0f} | {raw / med:.2f} | {w} |")
        if not args.liteeval_hidden:
            return
        print(f"\nLiteEval, cache off, cold page cache, batch {args.liteeval_batch}, "
              f"{args.train_videos} train videos, 1 epoch:")
        print("| LSTM coarse/fine | steps | data s | compute s | data share |")
        print("|---|---:|---:|---:|---:|")
        for r in liteeval_share(root, store_dir, files, args):
            share = r["data"] / (r["data"] + r["compute"])
            print(f"| {r['hidden']} | {r['steps']} | {r['data']:.2f} | {r['compute']:.2f} | "
                  f"{share:.1%} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
