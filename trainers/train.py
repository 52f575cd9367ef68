"""The one training loop and the one evaluation shared by every method.

Methods differ only in their module and loss (trainers/method.py); this file builds the data,
the model and Adam, runs the epochs (following the method's SCHEDULE if it has one), evaluates
on the validation split every epoch, checkpoints, and finally evaluates best.pt on the test
split. A method module may define `SCHEDULE` (stages, see `stage_plan`; the model's
`configure_stage(stage)` is called when the stage changes) and `after_training(model,
train_loader)` (called on the best weights before the test evaluation; best.pt is re-saved
with whatever buffers it filled). Run directory:

    RUN/config.json            resolved config (a re-run must match it)
    RUN/splits.json            train / val / train-probe video ids (trainers/splits.py)
    RUN/checkpoints/last.pt    model + optimizer + RNG + progress, written every epoch
    RUN/checkpoints/best.pt    model of the epoch with the best validation mAP
    RUN/metrics.jsonl          {"kind": "step", loss parts, data_time, compute_time} per step,
                               {"kind": "epoch", val mAP, top1, GFLOPs} per epoch
    RUN/eval.json              test summary (the run is finished once this exists)
    RUN/predictions.jsonl      one test video per line: id, labels, scores, gflops, length,
                               frames_used per view, decisions (with decision_names in eval.json)
    RUN/report/                accuracy vs GFLOPs, fine usage per class, decision strips and
                               summary.md, drawn when the run finishes (trainers/report.py)
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
from trainers import normalize, splits
from trainers.config import RunConfig, config_from_dict
from trainers.data import StoreInfo, make_loader, store_info
from trainers.method import Batch, TrainState
from trainers.methods import method_module
from trainers.metrics import mean_average_precision, top1_accuracy
from trainers.schedule import clip_gradients, lr_factor, make_optimizer, set_lr

log = logging.getLogger(__name__)


def train(cfg: RunConfig, *, stop_after_epochs: int | None = None) -> Path:
    """Train (or resume, or skip if finished) the run described by `cfg`; returns RUN.

    stop_after_epochs: return after this many epochs of this call, leaving a resumable run
    (for time-limited cluster slots); re-running continues from last.pt.
    """
    run, resolved = Path(cfg.out), cfg.to_dict()
    store = open_store(cfg.store)
    info = store_info(store)
    cfg.method_config.validate(info)
    for split in ("train", cfg.eval_split):
        if not store.video_ids(split):
            raise ValueError(f"store {cfg.store} has no {split!r} videos")
    if _check_run_dir(run, resolved):
        log.info("run %s already finished (eval.json exists): nothing to do", run)
        return run
    device = torch.device(cfg.device)
    module = method_module(cfg.method)
    torch.manual_seed(cfg.seed)
    model = module.build(cfg.method_config, info).to(device)
    views, stages = tuple(model.required_views), bool(model.needs_stages)
    train_loader = make_loader(store, views, "train", cfg.batch_size, True, cfg.seed, stages,
                               cfg.cache)
    val_loader = make_loader(store, views, "train", cfg.batch_size, False, 0, stages, cfg.cache)
    probe_loader = make_loader(store, views, "train", cfg.batch_size, False, 0, stages,
                               cfg.cache)
    test_loader = make_loader(store, views, cfg.eval_split, cfg.batch_size, False, 0, stages,
                              cfg.cache)
    # validation never on training videos: the store's val split, or one carved from train
    roles = splits.record(run, splits.plan_splits(store, cfg.val_split, cfg.val_fraction,
                                                  cfg.seed))
    for loader, ids in ((train_loader, roles.train), (val_loader, roles.val),
                        (probe_loader, roles.probe)):
        splits.restrict(loader, ids)
    if cfg.normalize:  # statistics of the training videos, stored with the weights
        normalize.attach(model, info, None if (run / "checkpoints" / "last.pt").exists()
                         else train_loader)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    plan = stage_plan(getattr(module, "SCHEDULE", None), cfg.epochs)
    state, start_epoch, best_map = TrainState(), 0, -math.inf
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, state.step, best_map = ck["epoch"], ck["step"], ck["best_map"]
        torch.set_rng_state(ck["rng"])
        if ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        log.info("resuming %s at epoch %d (step %d)", run, start_epoch, state.step)
    _trim_metrics(run / "metrics.jsonl", start_epoch)
    with (run / "metrics.jsonl").open("a") as metrics:
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
                log.info("stopping after %d epochs as asked; re-run to resume", stop_after_epochs)
                return run
            state.epoch = epoch
            if epoch == start_epoch or plan[epoch] != plan[epoch - 1]:
                state.stage = plan[epoch]
                if hasattr(model, "configure_stage"):
                    model.configure_stage(state.stage)
            model.train()
            state.training = True
            train_loader.set_epoch(epoch)
            losses, t0 = [], time.perf_counter()
            epoch_start = t0
            for batch in train_loader:
                batch = to_device(batch, device)
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
                _save(best, {"model": model.state_dict(), "epoch": epoch + 1, "val": _summary(val)})
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
            _save(last, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "epoch": epoch + 1, "step": state.step, "best_map": best_map,
                         "rng": torch.get_rng_state(), "config": resolved,
                         "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda"
                         else None})
    ck = torch.load(best, map_location=device, weights_only=False)
    model.load_state_dict(ck["model"])
    if hasattr(module, "after_training"):
        # e.g. C2F measures its training error rates (eq. 5) on the final weights
        module.after_training(model, splits.restrict(make_loader(
            store, views, "train", cfg.batch_size, False, 0, stages), roles.train))
        _save(best, {**ck, "model": model.state_dict()})
    result = evaluate(model, test_loader, info, state)
    write_eval(run, result)
    log.info("test (%s): mAP %.4f top1 %.4f GFLOPs/video %.2f ± %.2f fine usage %.3f",
             cfg.eval_split, result["mAP"], result["top1"], result["gflops_mean"],
             result["gflops_std"], result["fine_usage_mean"])
    from trainers.report import make_report  # report.py imports this module

    make_report(run)  # every finished run carries its figures; `c2f report` redraws/compares
    return run


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


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The same batch with every tensor on `device`."""
    if device.type == "cpu":
        return batch
    return Batch(
        features={v: x.to(device) for v, x in batch.features.items()},
        lengths=batch.lengths.to(device),
        mask=batch.mask.to(device),
        targets=batch.targets.to(device),
        video_ids=batch.video_ids,
        stages={v: {s: x.to(device) for s, x in st.items()} for v, st in batch.stages.items()},
    )


def video_scores(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Scores used for ranking: the model's own `score(logits)` if it has one, else softmax."""
    if hasattr(model, "score"):
        return model.score(logits)
    return torch.softmax(logits.float(), dim=-1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, info: StoreInfo, state: TrainState) -> dict:
    """Accuracy and cost of `model` over `loader`; the one place every method is measured.

    Returns mAP, top1, classes_skipped, GFLOPs per video and per frame (mean, std), fine usage
    per video (frames on the finest required view / length; mean, std), mean frames per view,
    decision_names, and `records`: one dict per video (id, labels, scores, gflops, length,
    frames_used, decisions).
    """
    was_training, was_state = model.training, state.training
    model.eval()
    state.training = False
    finest = tuple(model.required_views)[-1]
    records, all_scores, all_targets, names = [], [], [], {}
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    for batch in loader:
        batch = to_device(batch, device)
        out = model(batch, state)
        scores = video_scores(model, out.logits).cpu().numpy()
        targets = batch.targets.cpu().numpy()
        gflops = out.gflops.detach().double().cpu().numpy()
        used = {v: f.detach().cpu().numpy() for v, f in out.frames_used.items()}
        decisions = out.decisions.cpu().numpy()
        names.update(out.decision_names)
        for i, vid in enumerate(batch.video_ids):
            n = int(batch.lengths[i])
            records.append({
                "id": vid,
                "labels": [int(c) for c in np.flatnonzero(targets[i])],
                "scores": [round(float(s), 6) for s in scores[i]],
                "gflops": float(gflops[i]),
                "length": n,
                "frames_used": {v: float(f[i]) for v, f in used.items()},
                "decisions": [int(d) for d in decisions[i, :n]],
            })
        all_scores.append(scores)
        all_targets.append(targets)
    model.train(was_training)
    state.training = was_state
    if not records:
        raise ValueError("evaluation split is empty")
    scores, targets = np.concatenate(all_scores), np.concatenate(all_targets)
    ap = mean_average_precision(scores, targets)
    gflops = np.array([r["gflops"] for r in records])
    lengths = np.array([r["length"] for r in records], dtype=np.float64)
    fine = np.array([r["frames_used"].get(finest, 0.0) for r in records]) / lengths
    views = sorted({v for r in records for v in r["frames_used"]})
    return {
        "mAP": ap.map,
        "ce": mean_cross_entropy(scores, targets),
        "top1": top1_accuracy(scores, targets),
        "classes_evaluated": ap.classes_evaluated,
        "classes_skipped": ap.classes_skipped,
        "videos": len(records),
        "gflops_mean": float(gflops.mean()),
        "gflops_std": float(gflops.std()),
        "gflops_per_frame_mean": float((gflops / lengths).mean()),
        "gflops_per_frame_std": float((gflops / lengths).std()),
        "fine_view": finest,
        "fine_usage_mean": float(fine.mean()),
        "fine_usage_std": float(fine.std()),
        "frames_used_mean": {v: float(np.mean([r["frames_used"].get(v, 0.0) for r in records]))
                             for v in views},
        "frames_mean": float(lengths.mean()),
        "decision_names": {str(k): v for k, v in sorted(names.items())},
        "classes": list(info.classes),
        "records": records,
    }


def mean_cross_entropy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over videos of -sum_c y_c/|y| log score_c: the loss a probability score pays."""
    weights = targets / np.clip(targets.sum(axis=1, keepdims=True), 1.0, None)
    return float(-(weights * np.log(np.clip(scores, 1e-8, None))).sum(axis=1).mean())


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "records"}


def write_eval(run: Path, result: dict, extra: dict[str, Any] | None = None) -> None:
    """RUN/predictions.jsonl (per video) then RUN/eval.json (summary), each atomically."""
    lines = "".join(json.dumps(r) + "\n" for r in result["records"])
    atomic_write_text(run / "predictions.jsonl", lines)
    summary = _summary(result)
    if extra:
        summary.update(extra)
    atomic_write_text(run / "eval.json", json.dumps(summary, indent=2) + "\n")


def load_run(run: str | os.PathLike, which: str = "best") -> tuple[RunConfig, torch.nn.Module,
                                                                    Any, StoreInfo]:
    """(config, model with `which`.pt weights in eval mode, open store, store info) of a run."""
    run = Path(run)
    path = run / "checkpoints" / f"{which}.pt"
    if not (run / "config.json").exists() or not path.exists():
        raise FileNotFoundError(f"{run} is not a trained run (no config.json or {path.name})")
    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    store = open_store(cfg.store)
    info = store_info(store)
    model = method_module(cfg.method).build(cfg.method_config, info).to(cfg.device)
    if cfg.normalize:
        normalize.attach(model, info)  # buffers filled from the checkpoint
    model.load_state_dict(torch.load(path, map_location=cfg.device, weights_only=False)["model"])
    model.eval()
    return cfg, model, store, info


def _check_run_dir(run: Path, resolved: dict) -> bool:
    """Create RUN or check it holds the same config; True when that run already finished."""
    path = run / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        keys = sorted(set(old) | set(resolved))
        diff = [k for k in keys if old.get(k) != resolved.get(k)]
        diff += [f"method_config.{k}" for k in sorted(set(old.get("method_config", {}))
                 | set(resolved["method_config"]))
                 if old.get("method_config", {}).get(k) != resolved["method_config"].get(k)]
        diff = [k for k in diff if k != "method_config"]
        if diff:
            raise ValueError(f"{run} holds a run with a different config ({', '.join(diff)} "
                             "differ): choose another --out or delete it")
        return (run / "eval.json").exists()
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(resolved, indent=2) + "\n")
    return False


def _trim_metrics(path: Path, start_epoch: int) -> None:
    """Drop records of epochs after the checkpoint (written by an interrupted call)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln)["epoch"] < start_epoch]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
