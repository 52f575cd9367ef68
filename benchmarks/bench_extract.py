"""Feature-extraction throughput per view on CPU: images/s through preprocessing + backbone.

Times what `extract_shard` does per batch for each view (Pillow resize + centre crop +
normalise, then a channels_last float32 forward under torch.inference_mode) on random RGB
frames of a shard's stored size (short side 256), with random-init weights (speed does not
depend on the weights). Usage:
    python benchmarks/bench_extract.py [--batch-size 32] [--threads 2] [--batches 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import numpy as np
import torch

from pipeline.extract import ExtractView, load_view, run_view

VIEWS = ["mobilenet_v2@112", "resnet101@224"]


def bench_view(spec: str, frames: list[np.ndarray], batches: int) -> tuple[float, float]:
    backbone, size = spec.split("@")
    lv = load_view(ExtractView("bench", backbone, int(size)), "cpu")
    run_view(lv, frames, len(frames), "float32", "cpu")  # warm-up: allocator, kernels
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        run_view(lv, frames, len(frames), "float32", "cpu")
        times.append(time.perf_counter() - start)
    secs = statistics.median(times)
    return len(frames) / secs, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per view (median)")
    ap.add_argument("--view", action="append", help="BACKBONE@SIZE (default: LiteEval's two)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (256, 341, 3), dtype=np.uint8) for _ in range(args.batch_size)]
    print(f"CPU float32, batch {args.batch_size}, {args.threads} threads, frames 341x256 RGB, "
          f"median of {args.batches} batches after one warm-up, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print("| view | images/s | s/batch |")
    print("|---|---:|---:|")
    for spec in args.view or VIEWS:
        ips, secs = bench_view(spec, frames, args.batches)
        print(f"| {spec} | {ips:.1f} | {secs:.2f} |")
    print("GPU bf16: not measured — no GPU machine was lent to this task")


if __name__ == "__main__":
    main()
