"""`c2f manifest`, `c2f synth` and `c2f shards`: from video files to WebDataset shards.

Handlers only parse arguments, call the library (pipeline.manifest, pipeline.synth,
pipeline.shards, cluster.executor) and turn outcomes into exit codes (bad input: the
library's error propagates and cluster.cli.main prints it, exit 2); the library is imported
inside them, so `c2f --help` loads neither pyarrow nor PyAV.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from cluster.commands.options import (
    ACTIVITYNET_SUBSETS,
    VIDEO_CODECS,
    add_shard_args,
    shard_settings,
)
from cluster.commands.running import add_run_args, run_with_progress

EXIT_OK, EXIT_PARTIAL = 0, 1  # bad input: raise, and cluster.cli.main exits 2

MANIFEST_EPILOG = """\
Every builder writes one Parquet table with columns video_id (string), path (string, absolute),
labels (list<string>), split (string), duration (double, may be null). Checks: duplicate ids are
an error (nothing is written); missing files, and labels not in --classes, are listed and those
videos are left out (or, with --strict, nothing is written).
Exit codes: 0 written and clean, 1 written with videos left out (listed on stderr), 2 refused.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `manifest`, `synth` and `shards` to the top-level parser."""
    _register_manifest(sub)
    _register_synth(sub)
    _register_shards(sub)


# ------------------------------------------------------------------------------------ manifest


def _register_manifest(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "manifest",
        help="build or check a manifest (the video list every ingest stage reads)",
        description="Build a manifest from a CSV, JSONL, class folders, ActivityNet v1.3 JSON or "
        "the FCVID release lists, or check an existing one.",
        epilog=MANIFEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    def builder(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help_text, description=description, epilog=MANIFEST_EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--out", required=True, type=Path, help="manifest Parquet file to write")
        p.add_argument("--classes", type=Path,
                       help="class list (one name per line); labels not in it are reported")
        p.add_argument("--strict", action="store_true",
                       help="refuse (write nothing) on missing files or unknown labels")
        p.set_defaults(handler=_manifest_build)
        return p

    p = builder("csv", "from a CSV with a header row",
                "CSV columns: path (required; relative to --root, default the CSV's folder), "
                "video_id (default: path without extension), labels or label (several labels "
                "separated by '|' or ';'), split, duration (seconds). Other columns are ignored.")
    p.add_argument("input", type=Path, help="CSV file")
    p.add_argument("--root", type=Path, help="folder that relative paths start from")
    p.add_argument("--default-split", default="train", help="split for rows without one")

    p = builder("jsonl", "from JSON Lines",
                "One JSON object per line with the CSV's keys; labels is a list of strings.")
    p.add_argument("input", type=Path, help="JSONL file")
    p.add_argument("--root", type=Path, help="folder that relative paths start from")
    p.add_argument("--default-split", default="train", help="split for rows without one")

    p = builder("folder", "from class folders ROOT/<class>/<file>",
                "Each video file under ROOT/<class>/ (sub-folders included) gets label <class> "
                "and as id its path relative to ROOT without extension, e.g. dog/clip01.")
    p.add_argument("input", type=Path, help="ROOT folder")
    p.add_argument("--split", default="train", help="split given to every video")

    p = builder("activitynet", "from ActivityNet v1.3 JSON",
                "Reads database -> {id: {subset, duration, annotations: [{segment, label}]}}. "
                "Videos are found anywhere under --videos as v_<id>.<ext> or <id>.<ext>. Labels "
                "are the distinct annotation labels (none for the testing subset); subsets map "
                "training/validation/testing to train/val/test.")
    p.add_argument("input", type=Path, help="ActivityNet JSON (e.g. activity_net.v1-3.min.json)")
    p.add_argument("--videos", required=True, type=Path, help="folder holding the videos")
    p.add_argument("--subset", action="append", choices=ACTIVITYNET_SUBSETS,
                   help="keep only this ActivityNet subset (repeatable; default all)")

    p = builder("fcvid", "from the FCVID release's list and label files",
                "--split-file (materials/FCVID_VideoName_TrainTestSplit.txt): one line per "
                "video, '<relative path> <train|test>', paths relative to --videos. "
                "--label-file (materials/FCVID_Label.txt): one line per video in the same order, "
                "whitespace-separated 0/1 per category; every 1 is a label (multi-label). "
                "--categories (optional): one category name per line in column order, a leading "
                "index number ignored; without it labels are 0-based column numbers.")
    p.add_argument("--split-file", required=True, type=Path, help="video list with splits")
    p.add_argument("--label-file", required=True, type=Path, help="0/1 label matrix")
    p.add_argument("--categories", type=Path, help="category names, one per line")
    p.add_argument("--videos", required=True, type=Path, help="folder the list's paths start from")

    p = kinds.add_parser(
        "check", help="check an existing manifest",
        description="Read a manifest (refusing unreadable files, missing columns, nulls, "
        "duplicate ids) and report missing files and unknown labels. Exit 0 clean, 1 problems "
        "found, 2 unreadable.")
    p.add_argument("input", type=Path, help="manifest Parquet file")
    p.add_argument("--classes", type=Path, help="class list to check labels against")
    p.set_defaults(handler=_manifest_check)


def _rows_for(args: argparse.Namespace) -> list:
    from pipeline import manifest as mf

    if args.source == "csv":
        return mf.rows_from_csv(args.input, args.root, args.default_split)
    if args.source == "jsonl":
        return mf.rows_from_jsonl(args.input, args.root, args.default_split)
    if args.source == "folder":
        return mf.rows_from_folder(args.input, args.split)
    if args.source == "activitynet":
        return mf.rows_from_activitynet(args.input, args.videos, args.subset)
    return mf.rows_from_fcvid(args.split_file, args.label_file, args.videos, args.categories)


def _describe_table(table) -> str:
    splits = Counter(table.column("split").to_pylist())
    labels = Counter(label for labels in table.column("labels").to_pylist() for label in labels)
    split_text = ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
    return f"{table.num_rows} videos, {len(labels)} labels, splits: {split_text or 'none'}"


def _manifest_build(args: argparse.Namespace) -> int:
    from pipeline import manifest as mf

    classes = mf.read_class_list(args.classes) if args.classes else None
    rows = _rows_for(args)
    table, report = mf.build_table(rows, classes=classes, strict=args.strict)
    mf.write_manifest(table, args.out)
    print(f"wrote {args.out}: {_describe_table(table)}")
    for line in report.lines():
        print(f"left out: {line}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_PARTIAL


def _manifest_check(args: argparse.Namespace) -> int:
    from pipeline import manifest as mf

    table = mf.read_manifest(args.input)
    classes = mf.read_class_list(args.classes) if args.classes else None
    rows = [mf.ManifestRow(**r) for r in table.to_pylist()]
    report = mf.validate(rows, classes)
    print(f"{args.input}: {_describe_table(table)}")
    for line in report.lines():
        print(f"problem: {line}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_PARTIAL


# --------------------------------------------------------------------------------------- synth


def _register_synth(sub: argparse._SubParsersAction) -> None:
    from pipeline.synth_config import SynthConfig

    d = SynthConfig()
    p = sub.add_parser(
        "synth",
        help="write a small labelled set of synthetic untrimmed videos",
        description="Write synthetic untrimmed videos (class evidence only in some segments, "
        "background clutter elsewhere; classes in pairs that differ only in 1-px stripes visible "
        "at 224 px but not at 112 px), rotating H.264/VP9/MJPEG, plus DIR/manifest.parquet "
        "(train/val/test), DIR/classes.txt and DIR/synth.json (ground-truth segments). "
        "Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--videos", type=int, default=d.videos, help="number of videos (%(default)s)")
    p.add_argument("--classes", type=int, default=d.classes, help="number of classes (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    p.add_argument("--width", type=int, default=d.width, help="frame width, even (%(default)s)")
    p.add_argument("--height", type=int, default=d.height, help="frame height, even (%(default)s)")
    p.add_argument("--fps", type=float, default=d.fps, help="frame rate (%(default)s)")
    p.add_argument("--min-duration", type=float, default=d.min_duration,
                   help="shortest video in seconds (%(default)s)")
    p.add_argument("--max-duration", type=float, default=d.max_duration,
                   help="longest video in seconds (%(default)s)")
    p.add_argument("--codecs", default=",".join(d.codecs),
                   help=f"comma-separated codecs to rotate, from {', '.join(VIDEO_CODECS)} "
                   "(%(default)s)")
    p.add_argument("--multi-label-fraction", type=float, default=d.multi_label_fraction,
                   help="fraction of videos that also show a second class (%(default)s)")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from pipeline.synth import SynthConfig, make_synthetic_dataset

    codecs = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    unknown = [c for c in codecs if c not in VIDEO_CODECS]
    if unknown:
        raise ValueError(f"unknown codec(s) {', '.join(unknown)}; choose from "
                         f"{list(VIDEO_CODECS)}")
    cfg = SynthConfig(
        videos=args.videos, classes=args.classes, seed=args.seed, width=args.width,
        height=args.height, fps=args.fps, min_duration=args.min_duration,
        max_duration=args.max_duration, codecs=codecs,
        multi_label_fraction=args.multi_label_fraction,
    )
    videos = make_synthetic_dataset(args.out, cfg)
    seconds = sum(v.duration for v in videos)
    print(f"wrote {len(videos)} videos ({seconds:.0f} s of video, {cfg.classes} classes) and "
          f"{args.out / 'manifest.parquet'}")
    return EXIT_OK


# -------------------------------------------------------------------------------------- shards


def _register_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shards",
        help="decode a manifest's videos into WebDataset shards of sampled JPEG frames",
        description="Plan shards from a manifest (deterministic, manifest order), decode and "
        "write them (in this process, on an embedded Ray, or on a Ray cluster), then write "
        "OUT/index.parquet and OUT/errors.parquet. Re-running skips finished shards. "
        "Exit codes: 0 every video written, 1 some videos or shards failed (the rest are "
        "written; see OUT/errors.parquet), 2 bad input before any work (bad manifest, settings "
        "that differ from those OUT was made with).",
    )
    p.add_argument("--manifest", required=True, help="manifest Parquet file (path or s3://…)")
    p.add_argument("--out", required=True, help="output folder for the shards (path or s3://…)")
    add_shard_args(p)
    add_run_args(p)
    p.add_argument("--gpus-per-task", type=float, default=0.0, metavar="N",
                   help="on Ray: GPUs each decode task reserves, for DALI mixed (NVDEC) "
                   "decoding; fractions share a GPU (0.25: four tasks per GPU). A task that "
                   "reserves none sees no GPU and decodes on CPU (%(default)s)")
    p.set_defaults(handler=_shards)


def _shards(args: argparse.Namespace) -> int:
    from cluster.resources import TaskResources
    from pipeline import manifest as mf
    from pipeline.shards import IncompleteShardsError, finalize, plan_shards, write_shard

    args.num_gpus = TaskResources(args.cpus_per_task, args.gpus_per_task).num_gpus
    table = mf.read_manifest(args.manifest)
    plans = plan_shards(table, args.out, **shard_settings(args))
    if args.mode != "inprocess" and args.backend == "dali" and not args.num_gpus:
        print("c2f shards: decode tasks reserve no GPU (--gpus-per-task 0), so they see none "
              "and DALI decodes on CPU (VP8, VP9, MJPEG only); --gpus-per-task 0.25 lets four "
              "tasks share each GPU's NVDEC", file=sys.stderr)
    code = run_with_progress(write_shard, plans, args, table.num_rows, "shards")
    if code != EXIT_OK:
        return code
    try:
        summary = finalize(args.out)
    except IncompleteShardsError as exc:
        print(f"c2f shards: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    print(json.dumps(summary, indent=1))
    if summary["videos_failed"]:
        print(f"c2f shards: {summary['videos_failed']} video(s) failed; see {summary['errors']}",
              file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK
