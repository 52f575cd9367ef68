"""`c2f demo`: the end-to-end demo that `make demo` runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole workflow on generated videos (what `make demo` does)",
        description=(
            "Generate labelled untrimmed videos, decode them into shards on an embedded Ray, "
            "cache coarse (MobileNetV2@112) and fine (ResNet-101@224) features with RANDOM-INIT "
            "backbones, train LiteEval and a uniform-fine baseline, and draw the report PNGs. "
            "Re-running resumes: finished shards, parts and runs are skipped."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (demo-out)")
    p.add_argument("--videos", type=int, default=24, help="number of generated videos (24)")
    p.add_argument("--classes", type=int, default=4, help="number of classes (4)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per method (15)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from cluster.demo import run_demo

    return run_demo(args.run_c2f, args.out, videos=args.videos, classes=args.classes,
                    epochs=args.epochs)
