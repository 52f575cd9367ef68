"""`c2f extract`, `c2f build` and `c2f featstore info|validate|import`: the feature store.

Handlers parse arguments, call pipeline.extract / pipeline.build / featstore, run plans with
cluster.executor, and turn outcomes into exit codes: 0 done, 1 some work failed or problems
were found (finished outputs are kept; re-run to resume), 2 bad input before any work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from cluster.commands.gpu_stage import add_gpu_args, resolve_stage_resources, run_stage
from cluster.commands.running import add_run_args

EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT = 0, 1, 2

VIEW_HELP = ("NAME=BACKBONE@SIZE, repeatable, e.g. --view coarse=mobilenet_v2@112 --view "
             "fine=resnet101@224. Frames are resized to short side round(SIZE/0.875) (256 for "
             "224), centre-cropped to SIZE and ImageNet-normalised; all recorded in the store.")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `extract`, `build` and `featstore` to the top-level parser."""
    _register_extract(sub)
    _register_build(sub)
    _register_featstore(sub)


def _add_extraction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--view", action="append", required=True, metavar="NAME=BACKBONE@SIZE",
                   help=VIEW_HELP)
    p.add_argument("--weights", action="append", default=[], metavar="VIEW=PATH",
                   help="torchvision-layout checkpoint for a view (repeatable). Views without "
                   "one use RANDOM-INIT weights (seeded, identical in every worker): fine for "
                   "tests, meaningless for recognition")
    p.add_argument("--stages", action="append", default=[], metavar="VIEW",
                   help="also store the pooled output of every backbone stage of VIEW "
                   "(res1..res5 for ResNets; needed by SoF-Net)")
    p.add_argument("--logits", action="store_true",
                   help="also store each view's classifier logits per frame")
    p.add_argument("--batch-size", type=int, default=64, help="frames per forward (%(default)s)")
    p.add_argument("--dtype", choices=("float32", "bf16", "fp16"), default="float32",
                   help="inference precision; bf16/fp16 autocast needs --device cuda; stored "
                   "features are float16 in every case (%(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the backbones run (%(default)s)")
    p.add_argument("--jpeg-decoder", choices=("auto", "pillow", "dali"), default="auto",
                   help="who decodes the shards' JPEGs. auto: DALI's nvJPEG on the GPU with "
                   "--device cuda, Pillow on CPU (measured faster there than DALI's CPU "
                   "decoder); dali: DALI on the GPU with --device cuda, DALI's CPU decoder "
                   "otherwise; pillow: always Pillow. Recorded per view in the store "
                   "(%(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per shard task; 0 keeps torch's default (under Ray: "
                   "--cpus-per-task). Set it to the cores a task really has: oversubscribed "
                   "threads slow CPU inference down many times")
    add_run_args(p)
    add_gpu_args(p)  # gpuray: --gpus-per-worker, --max-retries


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not (eq and key and value):
            raise ValueError(f"bad {what} {item!r}: expected VIEW=VALUE")
        out[key] = value
    return out


def _warn_random_init(plans: list) -> None:
    for v in plans[0].views if hasattr(plans[0], "views") else plans[0].extract.views:
        if v.weights is None:
            print(f"WARNING: view {v.name} ({v.backbone}@{v.input_size}) uses RANDOM-INIT "
                  "weights (no --weights): its features are not meaningful for recognition",
                  file=sys.stderr)


# ------------------------------------------------------------------------------------- extract


def _register_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract per-frame CNN features from shards into an HDF5 feature store",
        description="Run one backbone per view over every frame of every shard in --shards and "
        "write one part per shard to OUT/parts/, then OUT/catalog.parquet. Parts that exist "
        "are skipped, so re-running resumes. Format: docs/featstore.md.",
    )
    p.add_argument("--shards", required=True, type=Path, help="folder of shard-*.tar files")
    p.add_argument("--out", required=True, type=Path, help="feature store folder")
    _add_extraction_args(p)
    p.set_defaults(handler=_extract)


def _extract_options(args: argparse.Namespace):
    """The extraction flags `c2f extract` and `c2f build` share, as one ExtractOptions."""
    from pipeline.extract import ExtractOptions

    return ExtractOptions(
        weights=_pairs(args.weights, "--weights"), stages=tuple(args.stages or ()),
        logits=args.logits, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
        threads=args.threads, jpeg_decoder=args.jpeg_decoder)


def _extract(args: argparse.Namespace) -> int:
    from pipeline.extract import extract_shard, finalize_store, plan_extraction

    try:
        plans = plan_extraction(args.shards, args.out, args.view, _extract_options(args))
        resolve_stage_resources(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"c2f extract: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _warn_random_init(plans)
    ok = run_stage(extract_shard, plans, args, None, "extract", args.out)
    if ok is None:
        return EXIT_BAD_INPUT
    if not ok:
        return EXIT_PARTIAL
    print(json.dumps(finalize_store(args.out, plans), indent=1))
    return EXIT_OK


# --------------------------------------------------------------------------------------- build


def _register_build(sub: argparse._SubParsersAction) -> None:
    from pipeline.types import SAMPLING_MODES

    p = sub.add_parser(
        "build",
        help="manifest -> shards -> feature store, one pass per shard",
        description="For each shard: decode its videos into a WebDataset shard (as `c2f "
        "shards`), then extract its features from the tar just written (as `c2f extract`), in "
        "the same task, so videos are decoded once. Finished shards and parts are skipped.",
    )
    p.add_argument("--manifest", required=True, type=Path, help="manifest Parquet file")
    p.add_argument("--shards-out", required=True, type=Path, help="output folder for shards")
    p.add_argument("--out", required=True, type=Path, help="feature store folder")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--fps", type=float, help="sample this many frames per second (default 1)")
    rate.add_argument("--frames", type=int, help="sample this many frames uniformly per video")
    p.add_argument("--sampling", choices=SAMPLING_MODES, default="exact",
                   help="exact: the frame shown at each target time; keyframe: nearest "
                   "keyframes only (%(default)s)")
    p.add_argument("--backend", choices=("auto", "pyav", "dali"), default="auto",
                   help="video decoder (%(default)s)")
    p.add_argument("--short-side", type=int, default=256,
                   help="stored frames' short side (%(default)s); must be >= each view's resize")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (%(default)s)")
    p.add_argument("--videos-per-shard", type=int, default=64, help="(%(default)s)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds allowed to decode one video (%(default)s)")
    _add_extraction_args(p)
    p.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from pipeline import manifest as mf
    from pipeline.build import build_shard, plan_build
    from pipeline.extract import finalize_store
    from pipeline.shards import IncompleteShardsError, ShardSettingsError, finalize
    from pipeline.types import FrameFormat, SamplingPlan

    try:
        table = mf.read_manifest(args.manifest)
        sampling = SamplingPlan(fps=None if args.frames is not None else (args.fps or 1.0),
                                frames=args.frames, mode=args.sampling)
        plans = plan_build(
            table, args.shards_out, args.out, args.view, sampling=sampling,
            fmt=FrameFormat(args.short_side, None, args.jpeg_quality), backend=args.backend,
            videos_per_shard=args.videos_per_shard, timeout_s=args.timeout,
            extract=_extract_options(args))
        resolve_stage_resources(args)
    except (mf.ManifestError, ShardSettingsError, ValueError, OSError, RuntimeError) as exc:
        print(f"c2f build: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _warn_random_init(plans)
    ok = run_stage(build_shard, plans, args, table.num_rows, "build", args.out)
    if ok is None:
        return EXIT_BAD_INPUT
    if not ok:
        return EXIT_PARTIAL
    try:
        shards = finalize(args.shards_out)
    except IncompleteShardsError as exc:
        print(f"c2f build: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    store = finalize_store(args.out, [p.extract for p in plans])
    print(json.dumps({"shards": shards, "store": store}, indent=1, default=str))
    if shards.get("videos_failed"):
        print(f"c2f build: {shards['videos_failed']} video(s) failed to decode; see "
              f"{shards.get('errors')}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


# ------------------------------------------------------------------------------------ featstore


def _register_featstore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("featstore", help="inspect, check or import a feature store",
                       description="Inspect (info), check (validate) or create by import "
                       "(import) an HDF5 feature store; format in docs/featstore.md.")
    cmds = p.add_subparsers(dest="featstore_command", metavar="COMMAND", required=True)

    q = cmds.add_parser("info", help="views, dims, backbones, videos per split, frames, size",
                        description="Print what a store holds and how it was made.")
    q.add_argument("store", type=Path, help="feature store folder")
    q.add_argument("--json", action="store_true", help="print one JSON object instead")
    q.set_defaults(handler=_info)

    q = cmds.add_parser(
        "validate", help="check every part and the catalog; exit 1 if anything is wrong",
        description="Open every part, check its index and attributes, read every dataset and "
        "compare its crc32, and check the catalog against the parts. Prints one line per "
        "problem naming the part. Exit 0 valid, 1 problems found.")
    q.add_argument("store", type=Path, help="feature store folder")
    q.add_argument("--quick", action="store_true",
                   help="skip reading the data (structure and catalog only)")
    q.add_argument("--fix-catalog", action="store_true",
                   help="rebuild catalog.parquet from the parts first (after adding parts)")
    q.set_defaults(handler=_validate)

    q = cmds.add_parser(
        "import", help="convert per-video .npy or LiteEval .pth feature caches into a store",
        description="Import folders of <video>.npy arrays [T, D] or <video>.pth files holding "
        "{'fea': tensor[T, D]} (LiteEval). Give one folder per view with --from VIEW=DIR. "
        "Labels and splits come from --manifest (parquet, or CSV with columns video_id, labels "
        "separated by ';', split); without it videos are unlabelled and in --default-split. "
        "Row i gets timestamp i / --fps.")
    q.add_argument("--format", choices=("npy", "pth"), required=True, help="cache file type")
    q.add_argument("--from", dest="sources", action="append", required=True,
                   metavar="VIEW=DIR", help="view name and folder of cache files (repeatable)")
    q.add_argument("--out", required=True, type=Path, help="feature store folder to create")
    q.add_argument("--manifest", type=Path, help="labels/splits table (parquet or CSV)")
    q.add_argument("--default-split", default="train", help="split without a manifest "
                   "(%(default)s)")
    q.add_argument("--backbone", default="unknown", help="backbone that made the features")
    q.add_argument("--input-size", type=int, default=0, help="its input size in pixels")
    q.add_argument("--fps", type=float, default=1.0,
                   help="rate the cached frames were sampled at (%(default)s, LiteEval)")
    q.add_argument("--videos-per-part", type=int, default=1000, help="(%(default)s)")
    q.set_defaults(handler=_import)


def _info(args: argparse.Namespace) -> int:
    from featstore import StoreError, open_store

    try:
        s = open_store(args.store)
        views = {v: s.view_attrs(v) for v in s.views}
    except StoreError as exc:
        print(f"c2f featstore info: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    lengths = s.catalog.column("length").to_pylist()
    info = {
        "store": str(args.store), "parts": len(s.parts()), "videos": len(s),
        "frames": int(sum(lengths)), "size_bytes": s.size_bytes(),
        "splits": dict(sorted(Counter(s.catalog.column("split").to_pylist()).items())),
        "classes": len(s.classes), "views": views, "attrs": s.attrs,
    }
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return EXIT_OK
    print(f"store: {info['store']} ({info['parts']} parts, {info['size_bytes'] / 1e6:.1f} MB)")
    print(f"videos: {info['videos']}, frames: {info['frames']}, classes: {info['classes']}")
    print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    for name, a in views.items():
        extras = []
        if "stages" in a:
            extras.append("stages " + ",".join(a["stages"]))
        if "logits_dim" in a:
            extras.append(f"logits {a['logits_dim']}")
        print(f"view {name}: {a['backbone']}@{a['input_size']} dim {a['dim']}"
              + (f" ({'; '.join(extras)})" if extras else ""))
        for key in sorted(set(a) - {"backbone", "input_size", "dim", "stages", "logits_dim"}):
            print(f"  {key}: {a[key]}")
    per_part = {"part", "num_videos", "num_frames", "complete", "created_utc", "shard", "views"}
    print(f"run attributes (part {info['attrs'].get('part')}):")
    for key, value in sorted(info["attrs"].items()):
        if key not in per_part:
            print(f"  {key}: {value}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from featstore import StoreError, build_catalog, validate

    if args.fix_catalog:
        try:
            build_catalog(args.store)
        except StoreError as exc:
            print(f"c2f featstore validate: cannot rebuild the catalog: {exc}", file=sys.stderr)
    problems = validate(args.store, deep=not args.quick)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{args.store}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_PARTIAL
    print(f"{args.store}: valid")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    from featstore import StoreError, import_npy, import_pth

    try:
        folders = _pairs(args.sources, "--from")
        fn = import_npy if args.format == "npy" else import_pth
        parts = fn(folders, args.out, manifest=args.manifest, default_split=args.default_split,
                   backbone=args.backbone, input_size=args.input_size, fps=args.fps,
                   videos_per_part=args.videos_per_part)
    except (ValueError, TypeError, OSError, StoreError) as exc:
        print(f"c2f featstore import: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {len(parts)} part(s) and {args.out / 'catalog.parquet'}")
    return EXIT_OK
