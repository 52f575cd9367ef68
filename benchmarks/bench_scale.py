"""FCVID at full scale, at tiny feature widths: planning, catalog, store open, one epoch.

FCVID has 91,223 videos, 4,232 hours (mean 167 s), 45,611 train / 45,612 test. Only the mean
duration is published, so durations are drawn from a lognormal with that mean and `--sigma`
(default 0.9, an assumption; the distribution's tail sets how uneven parts are). Phases:

1. plan: a 91,223-row manifest (write_manifest) -> read_manifest + `plan_shards` (1 fps,
   64 videos per shard): seconds and peak RSS of the planning process.
2. write: an FCVID-shaped store through `featstore.StoreWriter`, one part per 64 videos
   (1,426 parts), 1 fps rows, coarse D=4 and fine D=8 float16 (not a target, for context).
3. catalog: `build_catalog` over all parts: seconds.
4. open: `open_store` (reads the catalog only): seconds.
5. epoch: one shuffled pass of the trainers' loader (`make_loader`, batch 32, coarse + fine)
   over the train split, in a process whose open-file limit is set to 1024 (soft and hard,
   like `ulimit -n 1024`): videos/s, peak RSS, most parts open at once; once with
   `--cache off` and once with the run default (`auto`, which caches at these widths).

Every measured phase runs in its own fresh process, so its peak RSS is its own. Generated data
is deleted at the end unless --keep. Usage:

    python benchmarks/bench_scale.py [--videos 91223] [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FCVID_VIDEOS = 91_223
FCVID_MEAN_S = 167.0
VIDEOS_PER_PART = 64
DIMS = {"coarse": 4, "fine": 8}
BACKBONES = {"coarse": ("mobilenet_v2", 112), "fine": ("resnet101", 224)}
FD_LIMIT = 1024


def durations(n: int, sigma: float, seed: int = 0) -> np.ndarray:
    """Lognormal durations in seconds with mean FCVID_MEAN_S (mu = ln(mean) - sigma^2 / 2)."""
    mu = math.log(FCVID_MEAN_S) - sigma**2 / 2
    return np.random.default_rng(seed).lognormal(mu, sigma, n)


def video_ids(n: int) -> list[str]:
    return [f"fcvid{i:06d}" for i in range(n)]


def splits(n: int) -> list[str]:
    """FCVID's halves: every other video is a test video (45,611 train / 45,612 test)."""
    return ["test" if i % 2 == 0 else "train" for i in range(n)]


def labels(i: int) -> list[str]:
    return [f"class{i % 239:03d}"]  # FCVID: 239 classes


def write_fcvid_manifest(path: Path, secs: np.ndarray) -> None:
    import pyarrow as pa

    from pipeline.manifest import write_manifest

    n = len(secs)
    ids = video_ids(n)
    table = pa.table({
        "video_id": ids,
        "path": [f"/data/fcvid/videos/{v}.mp4" for v in ids],
        "labels": [labels(i) for i in range(n)],
        "split": splits(n),
        "duration": secs.astype(np.float64),
    })
    write_manifest(table, path)


def write_fcvid_store(store: Path, secs: np.ndarray) -> int:
    """One part per VIDEOS_PER_PART videos, round(duration) rows each; returns the parts."""
    from featstore import StoreWriter, ViewSpec

    views = {v: ViewSpec(dim=d, backbone=BACKBONES[v][0], input_size=BACKBONES[v][1])
             for v, d in DIMS.items()}
    rng = np.random.default_rng(1)
    ids, split = video_ids(len(secs)), splits(len(secs))
    parts = 0
    for start in range(0, len(secs), VIDEOS_PER_PART):
        with StoreWriter(store, f"shard-{parts:06d}", views) as w:
            for i in range(start, min(start + VIDEOS_PER_PART, len(secs))):
                t = max(1, round(float(secs[i])))
                feats = {v: rng.standard_normal((t, d), dtype=np.float32).astype(np.float16)
                         for v, d in DIMS.items()}
                w.add_video(ids[i], labels(i), split[i], np.arange(t, dtype=np.float64), feats)
        parts += 1
    return parts


# ---- phases, each run in a fresh process (python bench_scale.py --phase NAME ...) ----------

def phase_plan(root: Path) -> dict:
    from pipeline.manifest import read_manifest
    from pipeline.shards import plan_shards
    from pipeline.types import FrameFormat, SamplingPlan

    t0 = time.perf_counter()
    manifest = read_manifest(root / "manifest.parquet")
    plans = plan_shards(manifest, root / "shards", sampling=SamplingPlan(fps=1.0),
                        fmt=FrameFormat(), videos_per_shard=VIDEOS_PER_PART)
    return {"seconds": time.perf_counter() - t0, "shards": len(plans)}


def phase_catalog(root: Path) -> dict:
    from featstore import build_catalog

    t0 = time.perf_counter()
    table = build_catalog(root / "store")
    return {"seconds": time.perf_counter() - t0, "videos": table.num_rows}


def phase_open(root: Path) -> dict:
    from featstore import open_store

    t0 = time.perf_counter()
    store = open_store(root / "store")
    opened = time.perf_counter() - t0
    store.read(store.video_ids()[0], "fine")
    return {"seconds": opened, "first_read_s": time.perf_counter() - t0 - opened,
            "videos": len(store)}


def phase_epoch(root: Path, cache: str) -> dict:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    from featstore import open_store
    from trainers.cache_policy import choose_cache, feature_bytes
    from trainers.data import make_loader

    views = list(DIMS)
    t0 = time.perf_counter()
    store = open_store(root / "store")
    use_cache = choose_cache(cache, feature_bytes(store, views, ["train"], False))
    loader = make_loader(store, views, "train", 32, True, seed=0, cache=use_cache)
    t1 = time.perf_counter()
    videos, most_open = 0, 0
    for batch in loader:
        videos += len(batch.video_ids)
        most_open = max(most_open, store.open_parts())
    seconds = time.perf_counter() - t1
    return {"videos": videos, "seconds": seconds, "videos_per_s": videos / seconds,
            "setup_s": t1 - t0, "cache": use_cache, "most_open_parts": most_open,
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


PHASES = {"plan": phase_plan, "catalog": phase_catalog, "open": phase_open,
          "epoch-off": lambda root: phase_epoch(root, "off"),
          "epoch-auto": lambda root: phase_epoch(root, "auto")}


def run_phase(name: str, root: Path) -> dict:
    """Run a phase in a fresh interpreter; its result plus the child's peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, "--phase", name, "--dir", str(root)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=FCVID_VIDEOS)
    parser.add_argument("--sigma", type=float, default=0.9,
                        help="lognormal sigma of durations (assumed; the mean is FCVID's)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the generated manifest and store go (deleted after)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        import torch

        torch.set_num_threads(1)
        out = PHASES[args.phase](args.dir)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    root = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.dir))
    try:
        secs = durations(args.videos, args.sigma)
        frames = np.maximum(1, np.round(secs)).astype(np.int64)
        print(f"{args.videos} videos, durations lognormal mean {secs.mean():.1f} s "
              f"(sigma {args.sigma}), {frames.sum() / 1e6:.2f} M frames at 1 fps; dir {root}")
        write_fcvid_manifest(root / "manifest.parquet", secs)
        results = {"plan": run_phase("plan", root)}
        t0 = time.perf_counter()
        parts = write_fcvid_store(root / "store", secs)
        write_s = time.perf_counter() - t0
        print(f"wrote {parts} parts ({VIDEOS_PER_PART} videos each, D={DIMS}) in {write_s:.1f} s, "
              f"{sum(f.stat().st_size for f in (root / 'store').rglob('*')) / 1e6:.0f} MB")
        for name in ("catalog", "open", "epoch-off", "epoch-auto"):
            results[name] = run_phase(name, root)
        show(results)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def show(r: dict) -> None:
    plan, cat, opened = r["plan"], r["catalog"], r["open"]
    print("| phase | figure | target | peak RSS MB |")
    print("|---|---|---|---:|")
    print(f"| plan_shards ({plan['shards']} shards) | {plan['seconds']:.2f} s | <= 10 s | "
          f"{plan['peak_rss_mb']:.0f} |")
    print(f"| build_catalog ({cat['videos']} videos) | {cat['seconds']:.2f} s | <= 60 s | "
          f"{cat['peak_rss_mb']:.0f} |")
    print(f"| open_store | {opened['seconds']:.2f} s (first read {opened['first_read_s']:.3f} s)"
          f" | <= 5 s | {opened['peak_rss_mb']:.0f} |")
    for name in ("epoch-off", "epoch-auto"):
        e = r[name]
        print(f"| train epoch, {name[6:]} (cache {'on' if e['cache'] else 'off'}), "
              f"ulimit -n {e['fd_limit']} | {e['videos']} videos in {e['seconds']:.1f} s = "
              f"{e['videos_per_s']:.0f} videos/s, <= {e['most_open_parts']} parts open "
              f"(setup {e['setup_s']:.1f} s) | RSS <= 2048 MB | {e['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
