"""Flags that several commands share, declared once so the commands cannot drift apart.

`c2f shards` and `c2f build` take the same sampling, frame-format, shard-size and decoding
flags (`add_shard_args`), and `c2f extract` and `c2f build` the same extraction flags
(`add_extraction_args`); each group comes with the function that turns the parsed flags into
the library's value (SamplingPlan, FrameFormat, ExtractOptions, plan keyword arguments).

Choice lists are spelled out here instead of imported, because importing the pipeline modules
that own them pulls in numpy, pyarrow and PyAV and `c2f --help` must stay fast; a test checks
that each list equals its library's.
"""

from __future__ import annotations

import argparse
from typing import Any

from cluster.commands.gpu_stage import add_gpu_args
from cluster.commands.running import add_run_args

SAMPLING_MODES = ("exact", "keyframe")  # pipeline.types.SAMPLING_MODES
VIDEO_BACKENDS = ("auto", "pyav", "dali")  # pipeline.decode.BACKENDS
VIDEO_CODECS = ("h264", "vp9", "vp8", "mjpeg")  # pipeline.encode.CODECS
ACTIVITYNET_SUBSETS = ("testing", "training", "validation")  # pipeline.manifest


def pairs(items: list[str], what: str) -> dict[str, str]:
    """`VIEW=VALUE` items of a repeatable flag as a dict; ValueError naming a malformed one."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not (eq and key and value):
            raise ValueError(f"bad {what} {item!r}: expected VIEW=VALUE")
        out[key] = value
    return out


# -------------------------------------------------------------------------------------- shards


def add_shard_args(p: argparse.ArgumentParser) -> None:
    """What a shard holds and how it is made: sampling, frame format, shard size, decoding."""
    g = p.add_argument_group("sampling and frames (as `c2f shards`)")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, help="sample this many frames per second (default 1)")
    rate.add_argument("--frames", type=int, help="sample this many frames uniformly per video")
    g.add_argument("--sampling", choices=SAMPLING_MODES, default="exact",
                   help="exact: the frame shown at each target time; keyframe: nearest "
                   "keyframes only, decoding nothing else (%(default)s)")
    g.add_argument("--backend", choices=VIDEO_BACKENDS, default="auto",
                   help="video decoder (%(default)s: DALI on GPU, else the faster CPU decoder)")
    g.add_argument("--short-side", type=int, default=256,
                   help="resize frames to this short side, aspect kept (%(default)s); must be "
                   ">= the resize of every view extracted from them")
    g.add_argument("--center-crop", type=int, metavar="N", help="then crop the centre to N x N")
    g.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (%(default)s)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--videos-per-shard", type=int, default=64,
                      help="videos per shard (%(default)s)")
    size.add_argument("--target-bytes", type=int,
                      help="pack shards to about this many bytes instead (estimated from "
                      "duration, sampling and frame size)")
    g.add_argument("--timeout", type=float, default=120.0,
                   help="seconds allowed to decode one video before it is recorded as failed "
                   "(%(default)s)")


def shard_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments `plan_shards` and `plan_build` share, from `add_shard_args` flags."""
    from pipeline.types import FrameFormat, SamplingPlan

    sampling = SamplingPlan(fps=None if args.frames is not None else (args.fps or 1.0),
                            frames=args.frames, mode=args.sampling)
    return {
        "sampling": sampling,
        "fmt": FrameFormat(args.short_side, args.center_crop, args.jpeg_quality),
        "backend": args.backend,
        "videos_per_shard": args.videos_per_shard,
        "target_bytes": args.target_bytes,
        "timeout_s": args.timeout,
    }


# ---------------------------------------------------------------------------------- extraction

VIEW_HELP = ("NAME=BACKBONE@SIZE, repeatable, e.g. --view coarse=mobilenet_v2@112 --view "
             "fine=resnet101@224. Frames are resized to short side round(SIZE/0.875) (256 for "
             "224), centre-cropped to SIZE and ImageNet-normalised; all recorded in the store.")


def add_extraction_args(p: argparse.ArgumentParser) -> None:
    """Views, weights and how the backbones run; then where the plans run (add_run_args)."""
    g = p.add_argument_group("features (as `c2f extract`)")
    g.add_argument("--view", action="append", required=True, metavar="NAME=BACKBONE@SIZE",
                   help=VIEW_HELP)
    g.add_argument("--weights", action="append", default=[], metavar="VIEW=PATH",
                   help="torchvision-layout checkpoint for a view (repeatable). Views without "
                   "one use RANDOM-INIT weights (seeded, identical in every worker): fine for "
                   "tests, meaningless for recognition")
    g.add_argument("--stages", action="append", default=[], metavar="VIEW",
                   help="also store the pooled output of every backbone stage of VIEW "
                   "(res1..res5 for ResNets; needed by SoF-Net)")
    g.add_argument("--logits", action="store_true",
                   help="also store each view's classifier logits per frame")
    g.add_argument("--batch-size", type=int, default=64, help="frames per forward (%(default)s)")
    g.add_argument("--dtype", choices=("float32", "bf16", "fp16"), default="float32",
                   help="inference precision; bf16/fp16 autocast needs --device cuda; stored "
                   "features are float16 in every case (%(default)s)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the backbones run (%(default)s)")
    g.add_argument("--jpeg-decoder", choices=("auto", "pillow", "dali"), default="auto",
                   help="who decodes the shards' JPEGs. auto: DALI's nvJPEG on the GPU with "
                   "--device cuda, Pillow on CPU (measured faster there than DALI's CPU "
                   "decoder); dali: DALI on the GPU with --device cuda, DALI's CPU decoder "
                   "otherwise; pillow: always Pillow. Recorded per view in the store "
                   "(%(default)s)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per shard task; 0 keeps torch's default (under Ray: "
                   "--cpus-per-task). Set it to the cores a task really has: oversubscribed "
                   "threads slow CPU inference down many times")
    add_run_args(p)
    add_gpu_args(p)


def extract_options(args: argparse.Namespace):
    """The `add_extraction_args` flags as one pipeline.extract.ExtractOptions."""
    from pipeline.extract import ExtractOptions

    return ExtractOptions(
        weights=pairs(args.weights, "--weights"), stages=tuple(args.stages or ()),
        logits=args.logits, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
        threads=args.threads, jpeg_decoder=args.jpeg_decoder)
