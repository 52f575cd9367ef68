"""End-to-end training throughput on CPU: clips/s per worker and the data-loading share of
each step, for 1 worker (no Ray) and N Ray Train workers (DDP over gloo), side by side.

Data: `c2f synth` videos written to shards (T frames each), unless --shards is given.
Each worker takes the same local batch, so per-worker figures are comparable. Figures are
medians over the steps after the first of each run, from RUN/metrics.jsonl (rank 0):
data_time = waiting for the clip loader (pick + decode + augment), compute_time = forward,
backward, optimiser step.

    python benchmarks/bench_finetune.py --size 112 --frames 8 --batch 4 --steps 6
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_shards(root: Path, videos: int, frames: int) -> Path:
    from pipeline.manifest import read_manifest
    from pipeline.shards import finalize, plan_shards, write_shard
    from pipeline.synth import SynthConfig, make_synthetic_dataset
    from pipeline.types import FrameFormat, SamplingPlan

    make_synthetic_dataset(root, SynthConfig(videos=videos, classes=4, seed=0, width=320,
                                             height=240, min_duration=3.0, max_duration=5.0))
    out = root / "shards"
    table = read_manifest(root / "manifest.parquet")
    for plan in plan_shards(table, out, sampling=SamplingPlan(fps=None, frames=frames),
                            fmt=FrameFormat(short_side=128), videos_per_shard=videos // 4):
        write_shard(plan)
    finalize(out)
    return out


def run_one(shards: Path, out: Path, workers: int, args) -> dict:
    from trainers.finetune import finetune
    from trainers.finetune_config import resolve_finetune_config

    cfg = resolve_finetune_config(
        "uniform", shards=shards, out=out, views=[f"fine=resnet18@{args.size}"],
        frames=args.frames, batch_size=args.batch * workers, epochs=1,
        steps_per_epoch=args.steps, workers=workers,
        sets=["precise_bn_batches=0", "val_split=test"])
    started = time.perf_counter()
    finetune(cfg)
    wall = time.perf_counter() - started
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "step"][1:]
    data = np.median([s["data_time"] for s in steps])
    compute = np.median([s["compute_time"] for s in steps])
    return {"workers": workers, "data_s": data, "compute_s": compute,
            "clips_per_s_per_worker": args.batch / (data + compute),
            "data_share": data / (data + compute), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, help="existing shard folder (default: generate)")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="clips per worker per step")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if max(args.workers) > 1:
        import ray

        ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False,
                 log_to_driver=False)
    print(f"resnet18@{args.size}, T={args.frames}, {args.batch} clips/worker/step, "
          f"{args.steps} steps, torch threads {args.threads}; medians after the first step")
    print(f"{'workers':>7} {'data s':>8} {'compute s':>10} {'clips/s/worker':>15} "
          f"{'data share':>11} {'wall s':>7}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = args.shards or make_shards(root / "data", 16, args.frames)
        for w in args.workers:
            r = run_one(shards, root / f"run-{w}", w, args)
            print(f"{r['workers']:>7} {r['data_s']:>8.3f} {r['compute_s']:>10.3f} "
                  f"{r['clips_per_s_per_worker']:>15.2f} {100 * r['data_share']:>10.1f}% "
                  f"{r['wall_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
