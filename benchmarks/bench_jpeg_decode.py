"""JPEG decode + view preprocessing on CPU: Pillow vs DALI's CPU decoder, images/s.

Times what extraction does before the backbone for one view: Pillow (`decode_jpeg` per frame,
then `preprocess_frames`) against DALI (`DaliJpegDecoder('cpu')` on the batch, then
`preprocess_tensors` in torch). Frames are generated: smooth random images of a shard's stored
size (341 x 256), JPEG quality 90 as `c2f shards` writes them. One DALI thread and one torch
thread, as a one-CPU extraction task has. Median of --repeats passes after one warm-up.
Usage:
    python benchmarks/bench_jpeg_decode.py [--frames 64] [--view 112] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

from pipeline.imageops import decode_jpeg, encode_jpeg
from pipeline.jpeg_dali import DaliJpegDecoder
from pipeline.preprocess import preprocess_frames, preprocess_tensors, view_preprocess


def make_jpegs(count: int, width: int = 341, height: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        noisy = np.asarray(smooth).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
        jpegs.append(encode_jpeg(np.clip(noisy, 0, 255).astype(np.uint8), 90))
    return jpegs


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64, help="frames per batch (%(default)s)")
    ap.add_argument("--view", type=int, action="append", help="view input size (112, 224)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes (%(default)s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    jpegs = make_jpegs(args.frames)
    dali = DaliJpegDecoder("cpu", args.frames, threads=1)
    print(f"{args.frames} JPEGs 341x256 q90, 1 thread, median of {args.repeats} after a "
          f"warm-up, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print("| step | Pillow images/s | DALI-CPU images/s | DALI / Pillow |")
    print("|---|---:|---:|---:|")
    pil = median_seconds(lambda: [decode_jpeg(j) for j in jpegs], args.repeats)
    dal = median_seconds(lambda: dali.decode(jpegs), args.repeats)
    print(f"| decode only | {args.frames / pil:.0f} | {args.frames / dal:.0f} | {pil / dal:.2f} |")
    for size in args.view or [112, 224]:
        pp = view_preprocess(size)
        pil = median_seconds(
            lambda pp=pp: preprocess_frames([decode_jpeg(j) for j in jpegs], pp), args.repeats
        )
        dal = median_seconds(
            lambda pp=pp: preprocess_tensors(dali.decode(jpegs), pp), args.repeats
        )
        print(f"| decode + preprocess @{size} | {args.frames / pil:.0f} | "
              f"{args.frames / dal:.0f} | {pil / dal:.2f} |")


if __name__ == "__main__":
    main()
