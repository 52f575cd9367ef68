"""The one training loop shared by every method.

Methods differ only in their model and loss (trainers/method.py); what else the loop needs
about a method is its `MethodSpec` (trainers/methods.py): the builder, the stage schedule (the
model's `configure_stage(stage)` is called whenever the stage changes) and the post-training
hook (called on the best weights before the test evaluation; best.pt is re-saved with whatever
buffers it filled). This file builds the data, the model and the optimizer with its schedule
and clipping (trainers/schedule.py), runs the epochs, evaluates on the validation split every
epoch (trainers/evaluation.py; a store without one gets a validation split carved from train,
trainers/splits.py), checkpoints (trainers/checkpoint.py), and finally evaluates best.pt on
the test split. The files of a run
are named in trainers/rundir.py and described in docs/trainers.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featstore import open_store
from featstore.atomic import write_text
from trainers import normalize, rundir, splits
from trainers.cache_policy import choose_cache, feature_bytes
from trainers.checkpoint import load_checkpoint, plain, rng_state, save_checkpoint, set_rng_state
from trainers.config import EXECUTION_KEYS, RunConfig, config_from_dict
from trainers.data import StoreInfo, make_loader, store_info
from trainers.evaluation import evaluate, summary
from trainers.method import TrainState
from trainers.methods import load_ref, method_spec
from trainers.report import make_report
from trainers.rundir import BEST, LAST, RunDir
from trainers.schedule import clip_gradients, lr_factor, make_optimizer, set_lr
from trainers.threads import apply_threads

__all__ = ["evaluate", "load_run", "stage_plan", "train", "write_eval"]

log = logging.getLogger(__name__)


def train(cfg: RunConfig, *, stop_after_epochs: int | None = None) -> Path:
    """Train (or resume, or skip if finished) the run described by `cfg`; returns RUN.

    stop_after_epochs: return after this many epochs of this call, leaving a resumable run
    (for time-limited cluster slots); re-running continues from last.pt.
    """
    run, resolved = RunDir(cfg.out), cfg.to_dict()
    apply_threads(cfg.threads)
    store = open_store(cfg.store)
    info = store_info(store)
    cfg.method_config.validate(info)
    for split in ("train", cfg.eval_split):
        if not store.video_ids(split):
            raise ValueError(f"store {cfg.store} has no {split!r} videos")
    if rundir.claim(run, resolved, ignore=EXECUTION_KEYS,
                    read_old=lambda old: config_from_dict(old).to_dict()):
        log.info("run %s already finished (%s exists): nothing to do", run.root, run.eval.name)
        return run.root
    device = torch.device(cfg.device)
    spec = method_spec(cfg.method)
    torch.manual_seed(cfg.seed)
    model = spec.build(cfg.method_config, info).to(device)
    views, stages = tuple(model.required_views), bool(model.needs_stages)
    cache = choose_cache(cfg.cache, feature_bytes(store, views, ["train", cfg.val_split,
                                                                 cfg.eval_split], stages),
                         cfg.cache_gb)

    def loader(split: str, shuffle: bool = False, ids: list[str] | None = None) -> Any:
        made = make_loader(store, views, split, cfg.batch_size, shuffle,
                           cfg.seed if shuffle else 0, stages, cache)
        return made if ids is None else made.select(ids)

    # validation never on training videos: the store's val split, or one carved from train
    roles = splits.record(run.root, splits.plan_splits(store, cfg.val_split, cfg.val_fraction,
                                                       cfg.seed))
    train_loader = loader("train", shuffle=True, ids=roles.train)
    val_loader, probe_loader = loader("train", ids=roles.val), loader("train", ids=roles.probe)
    test_loader = loader(cfg.eval_split)
    if cfg.normalize:  # statistics of the training videos, stored with the weights
        normalize.attach(model, info, None if run.checkpoint(LAST).exists() else train_loader)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    plan = stage_plan(spec.stages(), cfg.epochs)
    state, start_epoch, best_map = TrainState(), 0, -math.inf
    last, best = run.checkpoint(LAST), run.checkpoint(BEST)
    if last.exists():
        ck = load_checkpoint(last, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, state.step, best_map = ck["epoch"], ck["step"], ck["best_map"]
        set_rng_state(ck["rng"])
        log.info("resuming %s at epoch %d (step %d)", run.root, start_epoch, state.step)
    _trim_metrics(run.metrics, start_epoch)
    with run.metrics.open("a") as metrics:
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
                log.info("stopping after %d epochs as asked; re-run to resume", stop_after_epochs)
                return run.root
            state.epoch = epoch
            if spec.schedule and (epoch == start_epoch or plan[epoch] != plan[epoch - 1]):
                state.stage = plan[epoch]
                model.configure_stage(state.stage)
            model.train()
            state.training = True
            train_loader.set_epoch(epoch)
            losses, t0 = [], time.perf_counter()
            epoch_start = t0
            for batch in train_loader:
                batch = batch.to(device)
                t1 = time.perf_counter()
                out = model(batch, state)
                loss, parts = model.loss(out, batch, state)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                parts["grad_norm"] = clip_gradients(model.parameters(), cfg.grad_clip)
                parts["lr"] = cfg.lr * lr_factor(cfg.schedule, state.step, len(train_loader),
                                                 cfg.epochs, cfg.warmup_epochs, cfg.milestones,
                                                 cfg.lr_gamma)
                set_lr(opt, parts["lr"])
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t2 = time.perf_counter()
                state.step += 1
                losses.append(loss.item())
                rec = {"kind": "step", "epoch": epoch, "step": state.step, "stage": state.stage,
                       "loss": losses[-1], **{k: float(v) for k, v in parts.items()},
                       "data_time": t1 - t0, "compute_time": t2 - t1}
                metrics.write(json.dumps(rec) + "\n")
                if state.step % cfg.log_every == 0:
                    log.info("epoch %d step %d loss %.4f", epoch, state.step, losses[-1])
                t0 = time.perf_counter()
            val = evaluate(model, val_loader, info, state)
            probe = evaluate(model, probe_loader, info, state)  # same measures on train videos
            improved = not val["mAP"] <= best_map  # NaN mAP (no positives) still checkpoints
            if improved:
                best_map = val["mAP"] if not math.isnan(val["mAP"]) else best_map
                save_checkpoint(best, {"model": model.state_dict(), "epoch": epoch + 1,
                                       "val": plain(summary(val))})
            rec = {"kind": "epoch", "epoch": epoch, "stage": state.stage,
                   "train_loss": float(np.mean(losses)), "val_mAP": val["mAP"],
                   "val_top1": val["top1"], "val_gflops_mean": val["gflops_mean"],
                   "val_ce": val["ce"], "train_mAP": probe["mAP"], "train_ce": probe["ce"],
                   "val_gflops_std": val["gflops_std"], "val_fine_usage": val["fine_usage_mean"],
                   "epoch_time": time.perf_counter() - epoch_start}
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            log.info("epoch %d/%d [%s] loss %.4f val mAP %.4f top1 %.4f GFLOPs/video %.2f%s",
                     epoch + 1, cfg.epochs, state.stage, rec["train_loss"], val["mAP"],
                     val["top1"], val["gflops_mean"], " *" if improved else "")
            save_checkpoint(last, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "epoch": epoch + 1, "step": state.step,
                                   "best_map": float(best_map), "rng": rng_state(device),
                                   "config": resolved})
    ck = load_checkpoint(best, map_location=device)
    model.load_state_dict(ck["model"])
    if spec.after_training:
        # e.g. C2F measures its training error rates (eq. 5) on the final weights
        load_ref(spec.after_training)(model, loader("train", ids=roles.train))
        save_checkpoint(best, {**ck, "model": model.state_dict()})
    result = evaluate(model, test_loader, info, state)
    write_eval(run.root, result)
    log.info("test (%s): mAP %.4f top1 %.4f GFLOPs/video %.2f ± %.2f fine usage %.3f",
             cfg.eval_split, result["mAP"], result["top1"], result["gflops_mean"],
             result["gflops_std"], result["fine_usage_mean"])
    make_report(run.root)  # every finished run carries its figures; `c2f report` redraws them
    return run.root


def stage_plan(schedule: list[tuple[str, float]] | None, epochs: int) -> list[str]:
    """Stage name of each epoch from (stage, fraction of epochs) pairs; 'joint' without one."""
    if not schedule:
        return ["joint"] * epochs
    total = sum(frac for _, frac in schedule)
    ends, acc = [], 0.0
    for _, frac in schedule:
        acc += frac / total
        ends.append(round(acc * epochs))
    plan = []
    for epoch in range(epochs):
        i = next((k for k, end in enumerate(ends) if epoch < end), len(schedule) - 1)
        plan.append(schedule[i][0])
    return plan


def write_eval(run: str | os.PathLike, result: dict, extra: dict[str, Any] | None = None) -> None:
    """RUN/predictions.jsonl (per video) then RUN/eval.json (summary), each atomically."""
    files = RunDir(run)
    write_text(files.predictions, "".join(json.dumps(r) + "\n" for r in result["records"]))
    write_text(files.eval, json.dumps({**summary(result), **(extra or {})}, indent=2) + "\n")


def load_run(run: str | os.PathLike, which: str = BEST) -> tuple[RunConfig, torch.nn.Module,
                                                                  Any, StoreInfo]:
    """(config, model with `which`.pt weights in eval mode, open store, store info) of a run.

    FileNotFoundError / ValueError (CheckpointError) naming what is missing or unreadable.
    """
    files = RunDir(run)
    path = files.checkpoint(which)
    _require_dir(files.root)
    if not files.config.exists() or not path.exists():
        raise FileNotFoundError(f"{files.root} is not a trained run (no {files.config.name} or "
                                f"{path.relative_to(files.root)})")
    cfg = config_from_dict(json.loads(files.config.read_text()))
    weights = load_checkpoint(path, map_location=cfg.device)["model"]  # refuse bad ones first
    store = open_store(cfg.store)
    info = store_info(store)
    model = method_spec(cfg.method).build(cfg.method_config, info).to(cfg.device)
    if cfg.normalize:
        normalize.attach(model, info)  # buffers filled from the checkpoint
    model.load_state_dict(weights)
    model.eval()
    return cfg, model, store, info


def _require_dir(path: Path) -> None:
    """FileNotFoundError / NotADirectoryError naming `path` unless it is a run directory."""
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a run directory")


def _trim_metrics(path: Path, start_epoch: int) -> None:
    """Drop records of epochs after the checkpoint (written by an interrupted call)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln)["epoch"] < start_epoch]
    write_text(path, "".join(ln + "\n" for ln in keep))
