"""`c2f extract`, `c2f build` and `c2f featstore info|validate|import`: the feature store.

Handlers parse arguments, call pipeline.extract / pipeline.build / featstore, run plans with
cluster.executor, and turn outcomes into exit codes: 0 done, 1 some work failed or problems
were found (finished outputs are kept; re-run to resume), 2 bad input before any work (the
library's error propagates; cluster.cli.main prints it) or a damaged input shard.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from cluster.commands.gpu_stage import resolve_stage_resources, run_stage
from cluster.commands.options import (
    add_extraction_args,
    add_shard_args,
    extract_options,
    pairs,
    shard_settings,
)

EXIT_OK, EXIT_PARTIAL = 0, 1  # bad input: raise, and cluster.cli.main exits 2
REBUILD_FOR_EXTRACT = ("delete it, re-run `c2f shards` with the flags that made the shards (it "
                       "writes only missing shards), then re-run this command")
REBUILD_FOR_BUILD = "delete it and re-run this command (it writes only missing shards)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `extract`, `build` and `featstore` to the top-level parser."""
    _register_extract(sub)
    _register_build(sub)
    _register_featstore(sub)


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
    p.add_argument("--shards", required=True, help="folder of shard-*.tar files (or s3://…)")
    p.add_argument("--out", required=True, help="feature store folder (or s3://…)")
    add_extraction_args(p)
    p.set_defaults(handler=_extract)


def _extract(args: argparse.Namespace) -> int:
    from pipeline.extract import extract_shard, finalize_store, plan_extraction

    try:
        plans = plan_extraction(args.shards, args.out, args.view, extract_options(args))
        resolve_stage_resources(args)
    except RuntimeError as exc:  # --device cuda where torch sees no GPU: the flag is wrong
        raise ValueError(str(exc)) from exc
    _warn_random_init(plans)
    code = run_stage(extract_shard, plans, args, None, "extract", args.out,
                     input_shard=lambda plan: plan.shard, rebuild=REBUILD_FOR_EXTRACT)
    if code != EXIT_OK:
        return code
    print(json.dumps(finalize_store(args.out, plans), indent=1))
    return EXIT_OK


# --------------------------------------------------------------------------------------- build


def _register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="manifest -> shards -> feature store, one pass per shard",
        description="For each shard: decode its videos into a WebDataset shard (as `c2f "
        "shards`), then extract its features from the tar just written (as `c2f extract`), in "
        "the same task, so videos are decoded once. Finished shards and parts are skipped.",
    )
    p.add_argument("--manifest", required=True, help="manifest Parquet file (path or s3://…)")
    p.add_argument("--shards-out", required=True,
                   help="output folder for shards (path or s3://…)")
    p.add_argument("--out", required=True, help="feature store folder (path or s3://…)")
    add_shard_args(p)
    add_extraction_args(p)
    p.add_argument("--video-decode", choices=("auto", "tasks", "workers"), default="auto",
                   help="with --pool: where videos are decoded into shards. workers: by the "
                   "backbone workers, beside their batches (DALI mixed/NVDEC on their own GPU); "
                   "tasks: by CPU decode tasks, which see no GPU. auto: workers for --backend "
                   "dali, and for --backend auto with --device cuda; tasks otherwise "
                   "(%(default)s)")
    p.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from pipeline import manifest as mf
    from pipeline.build import build_shard, plan_build
    from pipeline.extract import finalize_store
    from pipeline.shards import IncompleteShardsError, finalize

    table = mf.read_manifest(args.manifest)
    try:
        plans = plan_build(table, args.shards_out, args.out, args.view,
                           extract=extract_options(args), **shard_settings(args))
        resolve_stage_resources(args)
    except RuntimeError as exc:  # --device cuda where torch sees no GPU: the flag is wrong
        raise ValueError(str(exc)) from exc
    _warn_random_init(plans)
    code = run_stage(build_shard, plans, args, table.num_rows, "build", args.out,
                     input_shard=lambda plan: plan.extract.shard, rebuild=REBUILD_FOR_BUILD)
    if code != EXIT_OK:
        return code
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
        "{'fea': tensor[T, D]} (LiteEval). Give one folder per view with --from VIEW=DIR, and "
        "say what made each view so trainers can report GFLOPs: --backbone VIEW=NAME@SIZE for "
        "a backbone `c2f flops` knows (its cost is measured), or --gmacs VIEW=X for any other "
        "network (X GMACs per frame, recorded as the view attribute gmacs_per_frame). A view "
        "with neither is refused before anything is written. Labels and splits come from "
        "--manifest (parquet, or CSV with columns video_id, labels separated by ';', split); "
        "without it videos are unlabelled and in --default-split. Row i gets timestamp i / "
        "--fps.",
        epilog="example (LiteEval's FCVID cache): c2f featstore import --format pth "
        "--from coarse=fea/mbv2 --from fine=fea/r101 --backbone coarse=mobilenet_v2@112 "
        "--backbone fine=resnet101@224 --manifest labels.csv --out store")
    q.add_argument("--format", choices=("npy", "pth"), required=True, help="cache file type")
    q.add_argument("--from", dest="sources", action="append", required=True,
                   metavar="VIEW=DIR", help="view name and folder of cache files (repeatable)")
    q.add_argument("--out", required=True, type=Path, help="feature store folder to create")
    q.add_argument("--backbone", action="append", default=[], metavar="VIEW=NAME@SIZE",
                   help="backbone and input size that made VIEW's features, e.g. "
                   "fine=resnet101@224 (repeatable, one per view)")
    q.add_argument("--gmacs", action="append", default=[], metavar="VIEW=X",
                   help="per-frame cost in GMACs of a network not in `c2f flops`, e.g. "
                   "fine=4.1 (repeatable, one per view)")
    q.add_argument("--manifest", type=Path, help="labels/splits table (parquet or CSV)")
    q.add_argument("--default-split", default="train", help="split without a manifest "
                   "(%(default)s)")
    q.add_argument("--fps", type=float, default=1.0,
                   help="rate the cached frames were sampled at (%(default)s, LiteEval)")
    q.add_argument("--videos-per-part", type=int, default=1000, help="(%(default)s)")
    q.set_defaults(handler=_import)


def _info(args: argparse.Namespace) -> int:
    from featstore import open_store

    s = open_store(args.store)
    views = {v: s.view_attrs(v) for v in s.views}
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


def view_origins(sources: dict[str, str], backbones: list[str],
                 gmacs: list[str]) -> dict:
    """{view: ViewOrigin} from `--backbone VIEW=NAME@SIZE` and `--gmacs VIEW=X`, each checked
    against the backbone table (and measured) before anything is written; raises ValueError
    naming the bad value."""
    from backbones.build import CLIP_BACKBONES
    from backbones.flops import parse_entry, view_cost
    from featstore.importers import ViewOrigin

    given_backbones = pairs(backbones, "--backbone")
    given_gmacs = pairs(gmacs, "--gmacs")
    for flag, given in (("--backbone", given_backbones), ("--gmacs", given_gmacs)):
        unknown = sorted(set(given) - set(sources))
        if unknown:
            raise ValueError(f"{flag} {unknown[0]}=...: no view {unknown[0]!r} is imported "
                             f"(--from views: {', '.join(sorted(sources))})")
    origins = {}
    for view in sources:
        if view in given_backbones:
            entry = given_backbones[view]
            try:
                name, size, frames = parse_entry(entry)
            except ValueError as exc:
                raise ValueError(f"--backbone {view}={entry}: {exc}") from None
            if frames != 1 or name in CLIP_BACKBONES:
                raise ValueError(f"--backbone {view}={entry}: imported features are per frame; "
                                 f"{name} is a clip backbone (give --gmacs {view}=X instead)")
            cost = view_cost(name, size)
            print(f"view {view}: {name}@{size}, {cost.gmacs:.3f} GMACs/frame measured, "
                  f"feature dim {cost.feature_dim}")
            origins[view] = ViewOrigin(backbone=name, input_size=size)
        if view in given_gmacs:
            text = given_gmacs[view]
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"--gmacs {view}={text}: not a number") from None
            origins[view] = ViewOrigin(backbone=origins.get(view, ViewOrigin()).backbone,
                                       gmacs=value)
    return origins


def _import(args: argparse.Namespace) -> int:
    from featstore.importers import import_npy, import_pth

    folders = pairs(args.sources, "--from")
    origins = view_origins(folders, args.backbone, args.gmacs)
    fn = import_npy if args.format == "npy" else import_pth
    parts = fn(folders, args.out, origins, manifest=args.manifest,
               default_split=args.default_split, fps=args.fps,
               videos_per_part=args.videos_per_part)
    print(f"wrote {len(parts)} part(s) and {args.out / 'catalog.parquet'}")
    return EXIT_OK
