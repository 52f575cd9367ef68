"""`c2f finetune`: train a method end to end (backbones included) from WebDataset shards.

A separate command rather than `c2f train --end-to-end`: its input is a shard folder, not a
feature store, and it has its own knobs (views and their initial weights, clip length,
per-part learning rates, schedules, Ray Train workers); both commands share the methods,
losses, GFLOPs accounting and evaluation. Heavy libraries are imported inside the handler
so `c2f --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = """\
Fine-tune backbones together with a method, reading clips straight from `c2f shards` output.
Views are NAME=BACKBONE@SIZE as for `c2f extract`; the run ends by exporting each backbone to
RUN/export/VIEW.pth, which `c2f extract --weights VIEW=RUN/export/VIEW.pth` accepts.
Configuration, later sources win: defaults < --config FILE < flags < --set KEY=VALUE (a run
key such as backbone_lr_mult, or a key of the method's Config)."""


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} expects VIEW=PATH, got {item!r}")
        out[key] = value
    return out


def cmd_finetune(args: argparse.Namespace) -> int:
    from trainers.finetune import finetune
    from trainers.finetune_config import resolve_finetune_config
    from trainers.rundir import RunDir

    try:
        cfg = resolve_finetune_config(
            args.method, args.config, args.set, shards=args.shards, out=args.out,
            views=args.view or None, weights=_pairs(args.weights, "--weights") or None,
            freeze=args.freeze or None, frames=args.frames, batch_size=args.batch_size,
            epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, address=args.address, storage=args.storage,
            device=args.device, seed=args.seed, jpeg_decoder=args.jpeg_decoder)
        run = finetune(cfg, stop_after_epochs=args.stop_after_epochs)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = RunDir(run)
    if files.finished():
        s = json.loads(files.eval.read_text())
        print(f"run {run} ({cfg.eval_split}): mAP {100 * s['mAP']:.2f}%  top-1 "
              f"{100 * s['top1']:.2f}%  GFLOPs/video {s['gflops_mean']:.2f}  "
              f"[{s['videos']} videos]")
        for view in cfg.views:
            name = view.split("=", 1)[0]
            print(f"exported {files.export(name)}")
    else:
        print(f"run {run} stopped before the end; re-run the same command to resume")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="train a method end to end from shards (backbones too)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", nargs="?", help="uniform (default), lstm, uniform-cf, lstm-cf, "
                   "arnet, random-policy, c2f, sofnet (LiteEval stays on cached features)")
    p.add_argument("--shards", help="folder of shard-*.tar written by `c2f shards`")
    p.add_argument("--out", help="run directory")
    p.add_argument("--view", action="append", default=[], metavar="NAME=BACKBONE@SIZE",
                   help="a backbone view (repeatable; default fine=resnet18@112)")
    p.add_argument("--weights", action="append", default=[], metavar="VIEW=PATH",
                   help="torchvision-layout checkpoint to start a view from (repeatable)")
    p.add_argument("--freeze", action="append", default=[], metavar="VIEW",
                   help="keep this view's backbone fixed (repeatable)")
    p.add_argument("--frames", type=int, help="frames per clip (default 8)")
    p.add_argument("--batch-size", type=int, help="clips per step over all workers (default 8)")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--lr", type=float, help="base learning rate (default 0.01)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="default sgd (momentum 0.9)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default 1: no Ray)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default 0: CPU)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--storage", help="checkpoint storage every node sees (multi-node runs)")
    p.add_argument("--device", help="torch device of a single-process run (default cpu)")
    p.add_argument("--jpeg-decoder", choices=("pil", "dali", "auto"),
                   help="pil (default: decode and augment in the loader), dali (DALI decodes "
                   "each batch, nvJPEG on CUDA, augmentation as torch ops on the device), auto "
                   "(dali on CUDA when installed, else pil)")
    p.add_argument("--seed", type=int, help="seed of data order and init (default 0)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="return after N epochs, leaving a resumable run")
    p.set_defaults(handler=cmd_finetune)
