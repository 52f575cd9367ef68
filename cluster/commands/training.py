"""`c2f train | eval | report | sweep`: train gating policies and baselines on a feature store,
evaluate them (offline, online budget K, per-video budget), draw reports, sweep a knob.

Handlers only parse arguments and call trainers.* functions (which the tests call too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from cluster.sweep_ray import add_sweep_ray_args
from trainers.methods import BUDGET, METHODS, ONLINE, Evaluation, MethodSpec, method_spec

log = logging.getLogger(__name__)

CONFIG_HELP = """\
configuration, later sources win: defaults < --config FILE < flags < --set.
--set KEY=VALUE takes a loop key (epochs, batch_size, lr, weight_decay, seed, device,
val_split, eval_split, log_every, cache, cache_gb, threads) or a key of the method's Config,
bare (gamma=0.1) or dotted (method_config.gamma=0.1); lists as a,b,c. Unknown keys and
wrong types are refused. `c2f train METHOD --help` lists METHOD's keys."""


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="feature store directory (see docs/featstore.md)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--batch-size", type=int, help="videos per batch (default 32)")
    p.add_argument("--lr", type=float,
                   help="peak learning rate (default: the method's, listed by "
                   "`c2f train METHOD --help`)")
    p.add_argument("--weight-decay", type=float,
                   help="weight decay (default: the method's, listed by "
                   "`c2f train METHOD --help`)")
    p.add_argument("--seed", type=int, help="seed of data order and init (default 0)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--cache", choices=("auto", "on", "off"),
                   help="keep features in memory across epochs; auto (default): when they fit "
                   "in --cache-gb")
    p.add_argument("--cache-gb", type=float, metavar="GB",
                   help="memory budget of --cache auto (default: half of the available memory)")
    _add_threads_option(p)


def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: the CPUs this process may use: affinity, "
                   "cgroup quota, or what Ray reserved)")


def _flags(args: argparse.Namespace) -> dict:
    return {"store": args.store, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
            "device": args.device, "cache": args.cache, "cache_gb": args.cache_gb,
            "threads": args.threads}


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (a path, a key, a value) and end in exit 2."""
    from featstore import StoreError

    return ValueError, FileNotFoundError, NotADirectoryError, StoreError


def _fail(err: Exception, args: argparse.Namespace) -> int:
    """One line naming what is wrong, exit 2; the traceback only with `c2f -v`."""
    if args.verbose:
        log.error("traceback of the error below", exc_info=err)
    print(f"error: {err}", file=sys.stderr)
    return 2


def _print_summary(s: dict) -> None:
    print(f"mAP {100 * s['mAP']:.2f}%  top-1 {100 * s['top1']:.2f}%  "
          f"GFLOPs/video {s['gflops_mean']:.2f} ± {s['gflops_std']:.2f}  "
          f"GFLOPs/frame {s['gflops_per_frame_mean']:.3f}  "
          f"fine usage ({s['fine_view']}) {s['fine_usage_mean']:.3f} ± {s['fine_usage_std']:.3f}"
          f"  [{s['videos']} videos]")


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.config import resolve_config
    from trainers.rundir import RunDir
    from trainers.train import train

    try:
        cfg = resolve_config(args.method, args.config, args.set, out=args.out, **_flags(args))
        run = RunDir(train(cfg, stop_after_epochs=args.stop_after_epochs))
    except _user_errors() as err:
        return _fail(err, args)
    if run.finished():
        print(f"run {run.root} ({cfg.eval_split}):")
        _print_summary(json.loads(run.eval.read_text()))
    else:
        print(f"run {run.root} stopped before the end; re-run the same command to resume")
    return 0


def _no_evaluation(spec: MethodSpec, evaluation: Evaluation) -> ValueError:
    offering = sorted(n for n, s in METHODS.items() if s.evaluation(evaluation.name))
    return ValueError(f"method {spec.name!r} has no {evaluation.name} evaluation "
                      f"({evaluation.flag} works with runs of {', '.join(offering)})")


def cmd_eval(args: argparse.Namespace) -> int:
    from featstore.atomic import write_text
    from trainers.data import make_loader
    from trainers.evaluation import evaluate, summary
    from trainers.method import TrainState
    from trainers.methods import load_ref
    from trainers.rundir import RunDir
    from trainers.threads import apply_threads
    from trainers.train import load_run, stage_plan

    run = RunDir(args.run)
    try:
        apply_threads(args.threads)
        cfg, model, store, info = load_run(run.root, args.which)
        spec = method_spec(cfg.method)
        split = args.split or cfg.eval_split
        loader = make_loader(store, model.required_views, split, cfg.batch_size, False, 0,
                             model.needs_stages)
        for evaluation, values in ((ONLINE, args.online_budget), (BUDGET, args.budget)):
            if values and spec.evaluation(evaluation.name) is None:
                raise _no_evaluation(spec, evaluation)
        if args.online_budget:
            rows = load_ref(ONLINE.function)(model, loader, sorted(args.online_budget))
            write_text(run.output(ONLINE.output), json.dumps(rows, indent=2) + "\n")
            print(f"{'method':<12} {'K':>4} {'mAP':>7} {'top1':>7} {'GFLOPs':>9} {'fine':>6}")
            for r in rows:
                print(f"{r['method']:<12} {r['K']:>4} {100 * r['mAP']:>6.2f}% "
                      f"{100 * r['top1']:>6.2f}% {r['gflops']:>9.2f} {r['fine_frames']:>6.2f}")
            print(f"wrote {run.output(ONLINE.output)}")
        if args.budget:
            per = args.videos_per_budget or len(loader.video_ids)
            budgets = [b for b in args.budget for _ in range(per)]
            result = load_ref(BUDGET.function)(model, loader, budgets)
            write_text(run.output(BUDGET.output), json.dumps(result) + "\n")
            print(f"{len(budgets)} videos, budgets {args.budget} ({per} videos each): "
                  f"mean cost {result['mean_cost']:.2f} GFLOPs/video, top-1 "
                  f"{100 * result['top1']:.2f}%")
            print(f"wrote {run.output(BUDGET.output)}")
        if not args.online_budget and not args.budget:
            stages = stage_plan(spec.stages(), cfg.epochs)
            state = TrainState(epoch=cfg.epochs - 1, step=0, stage=stages[-1], training=False)
            result = summary(evaluate(model, loader, info, state))
            out = run.split_eval(split, args.which)
            write_text(out, json.dumps(result, indent=2) + "\n")
            print(f"{run.root} on {split} ({args.which}.pt):")
            _print_summary(result)
            print(f"wrote {out}")
    except _user_errors() as err:
        return _fail(err, args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from trainers.report import make_report

    try:
        paths = make_report(args.run, args.compare, args.out)
    except _user_errors() as err:
        return _fail(err, args)
    for p in paths:
        print(p)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cluster.sweep_ray import points_from_args  # points as Ray tasks
    from trainers.sweep import parse_knob, sweep

    try:
        key, values = parse_knob(args.knob)
        csv_path = sweep(args.method, args.out, key, values, args.set, args.config,
                         run_points=points_from_args(args), **_flags(args))
    except _user_errors() as err:
        return _fail(err, args)
    print(csv_path.read_text(), end="")
    print(f"wrote {csv_path} and {csv_path.with_name('curve.png')}")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from trainers.synthetic import REALISTIC, make_synthetic_store

    try:
        options = dict(REALISTIC) if args.realistic else {}
        given = {"classes": args.classes, "informative": args.informative,
                 "video_style": args.video_style}
        options |= {k: v for k, v in given.items() if v is not None}
        if args.min_frames is not None or args.max_frames is not None:
            lo, hi = options.get("frames", (16, 32))
            options["frames"] = (args.min_frames or lo, args.max_frames or hi)
        if args.no_val:
            options["with_val"] = False
        path = make_synthetic_store(args.store, videos=args.videos, seed=args.seed,
                                    scale=args.scale, **options)
    except _user_errors() as err:
        return _fail(err, args)
    print(f"wrote synthetic store {path} ({args.videos} videos, "
          f"{options.get('classes', 8)} classes)")
    return 0


def method_help(name: str) -> str:
    """The help section of method `name`: its summary and every config key (type, default,
    one line from its Config docstring). Imports the torch-free Config only."""
    from trainers.config_help import config_keys, format_keys

    spec = method_spec(name)
    lines = [f"{name}: {spec.summary}"]
    if spec.evaluations:
        lines.append("c2f eval options: " + ", ".join(e.flag for e in spec.evaluations))
    if spec.run_defaults:
        lines.append(f"{name} trains with (unless set): "
                     + ", ".join(f"{k}={v}" for k, v in spec.run_defaults.items()))
    lines.append(f"{name} config keys (--set KEY=VALUE):")
    keys = config_keys(spec.config_type(), spec.presets)
    return "\n".join(lines) + "\n" + format_keys(keys) + "\n"


class MethodHelp(argparse.Action):
    """-h/--help that, after METHOD, also lists that method's config keys."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        parser.print_help()
        method = getattr(namespace, "method", None)
        if method in METHODS:
            print()
            print(method_help(method), end="")
        parser.exit()


def _methods_listing() -> str:
    """One line per method, from its spec."""
    width = max(len(n) for n in METHODS)
    return "methods:\n" + "\n".join(f"  {n:<{width}}  {s.summary}" for n, s in METHODS.items())


def _add_method_parser(sub: argparse._SubParsersAction, name: str, **kwargs: object
                       ) -> argparse.ArgumentParser:
    p = sub.add_parser(name, add_help=False, epilog=_methods_listing() + "\n\n" + CONFIG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.add_argument("-h", "--help", action=MethodHelp,
                   help="show this help (after METHOD: also METHOD's config keys) and exit")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    """Add train, eval, report, sweep and synthetic to the top-level parser."""
    methods = ", ".join(sorted(METHODS))
    p = _add_method_parser(
        sub, "train", help="train a method or baseline on a feature store",
        description=_wrap("Train METHOD on STORE's train split with the shared loop: the "
        "method's optimizer, warm-up + cosine learning rate, gradient clipping, features "
        "standardised on the training videos, val mAP every epoch (a store without a val "
        "split gets one carved from train, see RUN/splits.json), "
        "RUN/checkpoints/{last,best}.pt, RUN/metrics.jsonl, then test evaluation "
        "of best.pt into RUN/eval.json and RUN/predictions.jsonl. Re-running the same "
        "command resumes an interrupted run and does nothing for a finished one."))
    p.add_argument("method", nargs="?", metavar="METHOD",
                   help=f"one of: {methods} (or 'method' in --config)")
    p.add_argument("--out", help="run directory to create (or resume)")
    _add_run_options(p)
    p.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="return after N epochs of this call, leaving a resumable run")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a trained run (offline, online budget K, per-video budget)",
        description="Evaluate RUN's best (or last) checkpoint. Without budget options: mAP, "
        "top-1, GFLOPs per video/frame and fine usage on a split, written to "
        "RUN/evals/SPLIT-WHICH.json. --online-budget K...: the method's online curve "
        "(LiteEval: stop after the K-th fine feature, vs Uniform-K and Seq-K) to "
        "RUN/online.json. --budget B...: the method's budget controller (C2F) streaming "
        "videos with per-video budget B (each for --videos-per-budget videos) to "
        "RUN/budget.json. `c2f report` draws both.")
    p.add_argument("run", metavar="RUN", help="run directory written by c2f train")
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="checkpoint to evaluate (default best)")
    p.add_argument("--split", help="store split to evaluate (default: the run's eval_split)")
    p.add_argument(ONLINE.flag, type=int, nargs="+", metavar="K", help=ONLINE.help)
    p.add_argument(BUDGET.flag, type=float, nargs="+", metavar="B",
                   help=BUDGET.help + ", applied one after the other")
    p.add_argument("--videos-per-budget", type=int, metavar="N",
                   help="videos streamed under each budget (default: the split's size)")
    _add_threads_option(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser(
        "report", help="draw figures and a summary table for finished runs",
        description="Write RUN/report/ (or --out): accuracy_vs_gflops.png (RUN and --compare "
        "runs), fine_usage_per_class.png, decision_strips.png, online_curve.png and "
        "budget.png when c2f eval wrote them, and summary.md.")
    p.add_argument("run", metavar="RUN", help="finished run directory")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN",
                   help="other finished runs (e.g. baselines) to put on the same plot")
    p.add_argument("--out", help="output directory (default RUN/report)")
    p.set_defaults(handler=cmd_report)

    p = _add_method_parser(
        sub, "sweep", help="train one run per value of a knob and draw the accuracy/cost curve",
        description=_wrap("Train METHOD once per value of --knob into OUT/KEY=VALUE/ (finished "
        "runs are skipped, interrupted ones resume), then write OUT/sweep.csv and "
        "OUT/curve.png (mAP vs GFLOPs/video)."))
    p.add_argument("method", metavar="METHOD", help=f"one of: {methods}")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--knob", required=True, metavar="KEY=V1,V2,...",
                   help="config key and its values, e.g. gamma=0.05,0.1,0.3")
    _add_run_options(p)
    add_sweep_ray_args(p)  # gpuray: --mode/--address/--cpus-per-trial/--gpus-per-trial
    p.set_defaults(handler=cmd_sweep)

    p = sub.add_parser(
        "synthetic", help="write a generated feature store with known structure (for trying "
        "and testing the trainers)",
        description="Write the synthetic store of trainers/synthetic.py: coarse/fine views, "
        "AR-Net resolution ladder views, fine per-stage features; only part of each video "
        "carries class evidence, coarse features cannot separate paired classes. Costs are "
        "those of the named backbones.")
    p.add_argument("store", metavar="STORE", help="store directory to create")
    p.add_argument("--videos", type=int, default=96, help="number of videos (default 96)")
    p.add_argument("--classes", type=int, default=None, help="even number of classes (default 8)")
    p.add_argument("--min-frames", type=int, default=None, help="shortest video (default 16)")
    p.add_argument("--max-frames", type=int, default=None, help="longest video (default 32)")
    p.add_argument("--informative", type=float, default=None,
                   help="fraction of each video carrying class evidence (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--realistic", action="store_true",
                   help="look like a real untrimmed dataset: 24 classes, 40-80 frames, 10%% "
                   "class segments, a per-video look, no val split (explicit flags still win)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every feature, e.g. 0.1 or 10 (default 1)")
    p.add_argument("--video-style", type=float, default=None,
                   help="amplitude of a constant per-video look added to every frame (default 0)")
    p.add_argument("--no-val", action="store_true",
                   help="train and test splits only (the val share goes to train)")
    p.set_defaults(handler=cmd_synthetic)
