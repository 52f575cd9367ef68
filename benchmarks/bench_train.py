"""LiteEval training throughput on CPU at the paper's FCVID sizes, through the shared loop.

Writes a feature store of random features with real dims (coarse: mobilenet_v2@112, D=1280;
fine: resnet101@224, D=2048; `--frames` frames per video, 1 fps) to disk, trains LiteEval with
the FCVID RNN sizes (coarse LSTM 512, fine LSTM 2048; LiteEval sec. 4.1) with
trainers.train.train, then reads the run's metrics.jsonl and prints, per epoch: videos/s, the
time spent waiting for data and in forward/backward/step, and the data-loading share
data_time / (data_time + compute_time). Epoch 0 reads HDF5; later epochs hit the loader's
in-memory cache.

    python benchmarks/bench_train.py --videos 64 --frames 60 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featstore import StoreWriter, ViewSpec, build_catalog
from trainers import liteeval
from trainers.config import RunConfig
from trainers.train import train


def write_store(path: Path, videos: int, frames: int, classes: int, val: int) -> None:
    """Random float16 features with the real backbones' dims; labels cycle over classes."""
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, part="bench-000", views={
        "coarse": ViewSpec(dim=1280, backbone="mobilenet_v2", input_size=112,
                           attrs={"benchmark": "random features"}),
        "fine": ViewSpec(dim=2048, backbone="resnet101", input_size=224,
                         attrs={"benchmark": "random features"}),
    })
    for i in range(videos + val):
        writer.add_video(
            f"bench{i:05d}", labels=[f"class{i % classes:03d}"],
            split="train" if i < videos else "val",
            timestamps=np.arange(frames, dtype=np.float64),
            features={"coarse": rng.standard_normal((frames, 1280)).astype(np.float16),
                      "fine": rng.standard_normal((frames, 2048)).astype(np.float16)})
    writer.close()
    build_catalog(path)


def summarise(metrics: Path) -> list[dict]:
    """Per-epoch totals of the loop's step records."""
    rows: dict[int, dict] = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] != "step":
            continue
        row = rows.setdefault(rec["epoch"], {"epoch": rec["epoch"], "steps": 0, "data": 0.0,
                                             "compute": 0.0})
        row["steps"] += 1
        row["data"] += rec["data_time"]
        row["compute"] += rec["compute_time"]
    return [rows[k] for k in sorted(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64, help="training videos")
    parser.add_argument("--frames", type=int, default=60, help="frames per video (1 fps)")
    parser.add_argument("--classes", type=int, default=239, help="classes (FCVID: 239)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--coarse-hidden", type=int, default=512)
    parser.add_argument("--fine-hidden", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the store and run under this directory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_train_"))
    root.mkdir(parents=True, exist_ok=True)
    store, run_dir = root / "store", root / "run"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    write_store(store, args.videos, args.frames, args.classes, val=args.batch_size)
    print(f"store: {args.videos} train videos x {args.frames} frames, coarse D=1280, "
          f"fine D=2048 ({time.perf_counter() - t0:.1f} s to write)")
    cfg = RunConfig(
        method="liteeval", store=str(store), out=str(run_dir), epochs=args.epochs,
        batch_size=args.batch_size, lr=1e-4, seed=0, eval_split="val", threads=args.threads,
        method_config=liteeval.Config(coarse_hidden=args.coarse_hidden,
                                      fine_hidden=args.fine_hidden, gamma=0.05))
    train(cfg)
    print(f"LiteEval LSTM {args.coarse_hidden}/{args.fine_hidden}, batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print("| epoch | steps | videos/s | data s | compute s | data share |")
    print("|---|---|---|---|---|---|")
    for row in summarise(run_dir / "metrics.jsonl"):
        total = row["data"] + row["compute"]
        print(f"| {row['epoch']} | {row['steps']} | {args.videos / total:.2f} | "
              f"{row['data']:.2f} | {row['compute']:.2f} | {row['data'] / total:.1%} |")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
