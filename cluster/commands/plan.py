"""`c2f plan`: frames, shards, bytes and time of a `c2f build` before running it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate frames, shards, bytes and hours of a build from a manifest",
        description="Count what `c2f build` would make from --manifest (durations probed where "
        "the manifest has none): frames, shards and their bytes, store bytes per view at "
        "float16, and time per stage on --gpus/--cpus from throughputs measured by a short "
        "calibration run here (decode one manifest video; a few forwards per view on this CPU) "
        "or given with --decode-fps / --images-per-s.",
    )
    p.add_argument("--manifest", required=True, type=Path, help="manifest Parquet file")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, help="frames sampled per second (default 1)")
    rate.add_argument("--frames", type=int, help="frames sampled uniformly per video")
    p.add_argument("--view", action="append", required=True, metavar="NAME=BACKBONE@SIZE",
                   help="a view to extract (repeatable)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs running backbones (%(default)s)")
    p.add_argument("--cpus", type=int, default=1, help="CPU cores decoding (%(default)s)")
    p.add_argument("--short-side", type=int, default=256, help="stored frames (%(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="(%(default)s)")
    p.add_argument("--videos-per-shard", type=int, default=64, help="(%(default)s)")
    p.add_argument("--decode-fps", type=float,
                   help="sampled frames/s one CPU core decodes; measured here if not given")
    p.add_argument("--images-per-s", action="append", default=[], metavar="VIEW=RATE",
                   help="images/s of a view on one backbone worker (a GPU, or a CPU core "
                   "without --gpus); views not given are measured here, on this CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:
    from backbones.build import feature_dim
    from pipeline import manifest as mf
    from pipeline.extract import parse_view
    from pipeline.plan_cost import (
        Throughputs,
        durations,
        estimate,
        measure_decode,
        measure_view,
    )
    from pipeline.types import DecodeError, FrameFormat, SamplingPlan

    try:
        table = mf.read_manifest(args.manifest)
        sampling = SamplingPlan(fps=None if args.frames is not None else (args.fps or 1.0),
                                frames=args.frames)
        fmt = FrameFormat(args.short_side, None, args.jpeg_quality)
        views = [parse_view(v) for v in args.view]
        given = {}
        for item in args.images_per_s:
            name, _, value = item.partition("=")
            given[name] = float(value)
        lengths, probed = durations(table)
    except (mf.ManifestError, ValueError, OSError) as exc:
        print(f"c2f plan: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    measured = []
    decode_fps = args.decode_fps
    if decode_fps is None:
        try:
            decode_fps = measure_decode(table.column("path").to_pylist(), sampling, fmt)
        except DecodeError as exc:
            print(f"c2f plan: cannot measure decoding here ({exc}); give --decode-fps F, the "
                  "sampled frames/s of one CPU core where the videos are", file=sys.stderr)
            return EXIT_BAD_INPUT
        measured.append("decode")
    rates = {}
    for v in views:
        rates[v.name] = given.get(v.name) or measure_view(v.backbone, v.input_size)
        if v.name not in given:
            measured.append(v.name)
    source = f"measured on this machine's CPU, one core: {', '.join(measured)}" if measured \
        else "given"
    if args.gpus and set(measured) - {"decode"}:
        print("c2f plan: WARNING: backbone rates measured on this CPU are used for GPUs; give "
              "--images-per-s VIEW=RATE measured on the target GPU", file=sys.stderr)
    cost = estimate(lengths, sampling, fmt,
                    [(v.name, v.backbone, v.input_size, feature_dim(v.backbone)) for v in views],
                    Throughputs(decode_fps, rates, source),
                    videos_per_shard=args.videos_per_shard, gpus=args.gpus, cpus=args.cpus,
                    probed=probed)
    info = cost.as_dict()
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    print(f"{info['videos']} videos ({probed} durations probed), {info['frames']:,} frames, "
          f"{info['shards']} shards, {info['shard_bytes'] / 1e9:.2f} GB of shards")
    for name, v in info["views"].items():
        print(f"view {name} ({v['backbone']}, dim {v['dim']}): {v['store_bytes'] / 1e9:.2f} GB "
              f"at float16, {v['seconds'] / 3600:.2f} h on {args.gpus or args.cpus} "
              f"{'GPU' if args.gpus else 'CPU'}(s) at {rates[name]:.1f} images/s each")
    print(f"decode: {info['decode_seconds'] / 3600:.2f} h on {args.cpus} CPU(s) at "
          f"{decode_fps:.1f} frames/s each; wall {info['wall_seconds'] / 3600:.2f} h; "
          f"{info['gpu_hours']:.2f} GPU-hours ({source})")
    return EXIT_OK
