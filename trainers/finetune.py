"""The end-to-end run: a cached-feature method with a trainable encoder in front, from shards.

`finetune(cfg)` trains on one process (the default) or hands the same per-worker loop to
Ray Train (`cfg.workers > 1` or an `address`, trainers/finetune_ray.py). The loop reads top
to bottom: data (trainers/clips.py), model (`EndToEnd`: trainers/encoder.py + the method's
own module; `END_TO_END` names the methods whose end-to-end model differs: AR-Net's A-1 in
trainers/finetune_arnet.py, SoF-Net's early stop in trainers/finetune_sofnet.py; the backbones
a stage freezes come from trainers/finetune_stages.py), per-part optimiser and schedule (trainers/finetune_optim.py), epochs, the shared
evaluation (`trainers.evaluation.evaluate`, fed batches the encoder computed), checkpoints
(trainers/checkpoint.py: read with weights_only=True), the test evaluation and the export of
every trained backbone (trainers/export.py). What the loop needs about a method comes from its
`MethodSpec` (trainers/methods.py); file names from trainers/rundir.py. Run directory:

    RUN/config.json            resolved FinetuneConfig (a re-run must match it)
    RUN/checkpoints/last.pt    model + optimiser + schedule + RNG + progress, every epoch
    RUN/checkpoints/best.pt    model of the epoch with the best validation mAP
    RUN/metrics.jsonl          per step (loss of the global batch, rank 0's loss parts, lr,
                               data_time, compute_time), per epoch, and a record per resume
    RUN/ranks/rank-R-epoch-E.json   steps and training videos of each rank in each epoch
    RUN/eval.json, RUN/predictions.jsonl   test evaluation (the run is finished once they exist)
    RUN/export/VIEW.pth (+ VIEW.json)      fine-tuned backbones in torchvision layout
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from backbones import CLIP_BACKBONES
from backbones.tsm import add_temporal_shift
from featstore.atomic import write_text
from trainers import rundir
from trainers.checkpoint import load_checkpoint, plain, rng_state, save_checkpoint, set_rng_state
from trainers.clips import ClipLoader, ClipSpec, scan_shards, shard_urls
from trainers.clips_dali import DaliClipLoader, clip_loader, resolve_clip_decoder
from trainers.encoder import ClipEncoder, EndToEnd, clip_sizes, parse_clip_view
from trainers.evaluation import evaluate, evaluating, summary
from trainers.finetune_arnet import BaseModelsFirst
from trainers.finetune_config import FinetuneConfig
from trainers.finetune_optim import lr_factor, make_optimizer, param_groups
from trainers.finetune_sofnet import StopOrForward
from trainers.finetune_stages import stage_frozen_views
from trainers.method import Batch, TrainState
from trainers.methods import load_ref, method_spec
from trainers.rundir import BEST, LAST, RunDir
from trainers.threads import apply_threads
from trainers.train import stage_plan, write_eval

log = logging.getLogger(__name__)

#: methods whose end-to-end model differs from "encoder, then the method": AR-Net trains its
#: base models first (A-1), SoF-Net's frames stop early in training
END_TO_END: dict[str, type[EndToEnd]] = {"arnet": BaseModelsFirst,
                                         "random-policy": BaseModelsFirst,
                                         "sofnet": StopOrForward}

#: called by every rank after each epoch with (epoch, record, last.pt or None on ranks > 0)
EpochHook = Callable[[int, dict, Path | None], None]


def finetune(cfg: FinetuneConfig, *, stop_after_epochs: int | None = None) -> Path:
    """Train (or resume, or skip if finished) the end-to-end run `cfg`; returns RUN."""
    if cfg.workers > 1 or cfg.address:
        from trainers.finetune_ray import finetune_with_ray

        files = RunDir(cfg.out)
        if prepare_run_dir(files.root, cfg.to_dict()):
            log.info("run %s already finished (%s exists): nothing to do", files.root,
                     files.eval.name)
            return files.root
        # the loop is handed over (not imported there), so finetune_ray needs nothing of here
        return finetune_with_ray(cfg, train_worker, stop_after_epochs=stop_after_epochs)
    # the run sets its own intra-op threads (OMP_NUM_THREADS, else the CPUs this process may
    # use, as `c2f train` does) instead of inheriting whatever the calling process left set
    apply_threads(None)
    return train_worker(cfg, stop_after_epochs=stop_after_epochs)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


#: keys that say how a run executes, not what it learns: a run may resume with another value
#: (e.g. started with Pillow on a CPU node, resumed with DALI on a GPU node: the clips agree
#: within one grey level, tests/test_finetune_dali.py), and runs written before the key existed
#: resume too
EXECUTION_KEYS = ("jpeg_decoder",)


def prepare_run_dir(run: Path, resolved: dict) -> bool:
    """Create RUN or check it holds the same config; True when that run already finished."""
    return rundir.claim(RunDir(run), resolved, ignore=EXECUTION_KEYS)


class EncodedLoader:
    """A re-iterable of method Batches over a clip loader (for a method's `after_training`
    hook, which may iterate its loader more than once)."""

    def __init__(self, model: EndToEnd, loader: ClipLoader | DaliClipLoader) -> None:
        self.model, self.loader = model, loader

    def __iter__(self) -> Iterator[Batch]:
        return encoded_batches(self.model, self.loader)


@dataclasses.dataclass
class E2ESetup:
    """Everything the loop and the evaluation need, built the same way on every rank."""

    model: EndToEnd
    info: object
    classes: list[str]
    sizes: tuple[int, ...]
    train_videos: int
    contiguous: bool  # clip backbones take T consecutive frames (MF-Net 3D)


def build_model(cfg: FinetuneConfig) -> E2ESetup:
    """Classes and split sizes from the shards' json members, then encoder + method."""
    entries = scan_shards(shard_urls(cfg.shards))
    classes = sorted({c for e in entries for c in e.labels})
    train_videos = sum(1 for e in entries if e.split == "train")
    if not train_videos:
        raise ValueError(f"shards {cfg.shards} hold no 'train' videos")
    views = [parse_clip_view(v) for v in cfg.views]
    views = [dataclasses.replace(v, weights=cfg.weights.get(v.name)) for v in views]
    torch.manual_seed(cfg.seed)
    encoder = ClipEncoder(views, frozen=cfg.freeze,
                          bf16=cfg.bf16 and torch.device(cfg.device).type == "cuda")
    for name in cfg.tsm:
        add_temporal_shift(encoder.backbones[name], cfg.frames)
    info = encoder.store_info(classes, cfg.frames)
    cfg.method_config.validate(info)
    method = method_spec(cfg.method).build(cfg.method_config, info)
    encoder.with_stages = bool(method.needs_stages)
    model = END_TO_END.get(cfg.method, EndToEnd)(encoder, method)
    used = [encoder.views[v] for v in method.required_views]
    sizes = clip_sizes(used)
    return E2ESetup(model, info, classes, sizes, train_videos,
                    any(v.backbone in CLIP_BACKBONES for v in used))


def encoded_batches(model: EndToEnd, loader: ClipLoader | DaliClipLoader) -> Iterator[Batch]:
    """The loader's clips turned into method Batches by the encoder, walked with the shared
    `trainers.evaluation.evaluating` (eval mode, no grad, on the model's device), so the shared
    `evaluate` measures an end-to-end model exactly as a cached one."""
    with evaluating(model, loader) as clips:
        for clip in clips:
            yield model.encode(clip.clips, clip.targets, clip.video_ids)


def evaluate_e2e(model: EndToEnd, loader: ClipLoader | DaliClipLoader, info, state: TrainState) -> dict:
    """`trainers.evaluation.evaluate` of the method on the encoder's batches."""
    return evaluate(model.method, encoded_batches(model, loader), info, state)


def precise_bn(model: EndToEnd, loader: ClipLoader | DaliClipLoader, batches: int, device: torch.device) -> None:
    """Recompute the trained backbones' BatchNorm running statistics as the plain average over
    `batches` batches of clips with the current weights ("precise BN", as SlowFast does), so
    eval-mode BatchNorm matches the weights it is used with; running averages with momentum
    lag far behind weights that moved in a short fine-tuning run."""
    trained = [b for n, b in model.encoder.backbones.items() if n not in model.encoder.frozen]
    bns = [m for b in trained for m in b.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or batches < 1:
        return
    was, momenta = model.training, [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.encoder.train()
    with torch.no_grad():
        for i, clip in enumerate(loader):
            if i == batches:
                break
            clip = clip.to(device)
            model.encode(clip.clips, clip.targets, clip.video_ids)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train(was)


def _global_mean(value: torch.Tensor, world: int) -> float:
    """The loss of the global batch (mean over ranks), so curves compare across worker counts."""
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return float(value)


def train_worker(cfg: FinetuneConfig, *, stop_after_epochs: int | None = None,
                 on_epoch: EpochHook | None = None, resume_from: Path | None = None) -> Path:
    """The loop every rank runs (one rank without Ray). Rank 0 evaluates, checkpoints and
    writes RUN; every rank draws the same number of steps (trainers/clips.py)."""
    files, resolved = RunDir(cfg.out), cfg.to_dict()
    run = files.root
    rank, world = _rank_world()
    if rank == 0 and prepare_run_dir(run, resolved):
        log.info("run %s already finished (%s exists): nothing to do", run, files.eval.name)
        return run
    device = torch.device(cfg.device)
    setup = build_model(cfg)
    model, info = setup.model.to(device), setup.info
    urls = shard_urls(cfg.shards)
    steps = cfg.steps_per_epoch or math.ceil(setup.train_videos / cfg.batch_size)
    dec = {"decoder": resolve_clip_decoder(cfg.jpeg_decoder, device), "device": device}
    train_loader = clip_loader(urls, ClipSpec(cfg.frames, setup.sizes, True, setup.contiguous),
                               setup.classes, "train", cfg.batch_size // world, steps, cfg.seed,
                               **dec)
    eval_spec = ClipSpec(cfg.frames, setup.sizes, False, setup.contiguous)
    val_loader = clip_loader(urls, eval_spec, setup.classes, cfg.val_split, cfg.batch_size,
                             **dec)
    if len(val_loader) == 0:
        log.warning("no %r videos: best.pt follows the training split", cfg.val_split)
        val_loader = clip_loader(urls, eval_spec, setup.classes, "train", cfg.batch_size, **dec)
    bn_loader = clip_loader(urls, eval_spec, setup.classes, "train", cfg.batch_size, **dec)
    groups = param_groups(model.encoder, model.method, cfg.lr, cfg.backbone_lr_mult,
                          cfg.head_lr_mult)
    opt = make_optimizer(groups, cfg.optimizer, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, steps, cfg.epochs, cfg.warmup_epochs, cfg.schedule, cfg.milestones))
    state, start_epoch, best_map = TrainState(), 0, -math.inf
    spec = method_spec(cfg.method)
    last, best = files.checkpoint(LAST), files.checkpoint(BEST)
    resume = resume_from if resume_from is not None else last
    records: list[dict] = []
    if resume.exists():
        ck = load_checkpoint(resume, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, state.step, best_map = ck["epoch"], ck["step"], ck["best_map"]
        set_rng_state(ck["rng"])
        records = [r for r in ck["records"] if r["epoch"] < start_epoch]
        records.append({"kind": "resume", "epoch": start_epoch, "step": state.step,
                        "from": str(resume)})
        log.info("resuming %s at epoch %d (step %d)", run, start_epoch, state.step)
    plan = stage_plan(spec.stages(), cfg.epochs)
    train_model = model
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            log.info("stopping after %d epochs as asked; re-run to resume", stop_after_epochs)
            return run
        if epoch == start_epoch or plan[epoch] != plan[epoch - 1]:
            # a staged method (AR-Net A-1 -> A-2 -> A-3, C2F teacher -> classroom) freezes and
            # unfreezes parts (and backbones) per stage; DDP is rebuilt so it synchronises
            # exactly the parameters that now learn
            state.stage = plan[epoch]
            if spec.schedule:
                model.method.configure_stage(state.stage)
            model.encoder.freeze_for_stage(
                stage_frozen_views(cfg.method, cfg.method_config, state.stage))
            if world > 1:
                train_model = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=len(set(plan)) > 1)
        state.epoch, state.training = epoch, True
        model.train()
        train_loader.set_epoch(epoch)
        losses, t0, epoch_start = [], time.perf_counter(), time.perf_counter()
        seen: set[str] = set()
        for clip in train_loader:
            seen.update(clip.video_ids)
            clip = clip.to(device, non_blocking=True)
            t1 = time.perf_counter()
            out, batch = train_model(clip.clips, clip.targets, clip.video_ids, state)
            loss, parts = model.loss(out, batch, state)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            state.step += 1
            losses.append(_global_mean(loss.detach(), world))
            records.append({"kind": "step", "epoch": epoch, "step": state.step, "rank": rank,
                            "stage": state.stage,
                            "loss": losses[-1], **{k: float(v) for k, v in parts.items()},
                            "lr": opt.param_groups[0]["lr"], "data_time": t1 - t0,
                            "compute_time": t2 - t1})
            if state.step % cfg.log_every == 0:
                log.info("epoch %d step %d loss %.4f", epoch, state.step, losses[-1])
            t0 = time.perf_counter()
        rec = {"kind": "epoch", "epoch": epoch, "rank": rank, "stage": state.stage,
               "steps": len(losses),
               "train_loss": float(np.mean(losses)), "epoch_time": time.perf_counter()
               - epoch_start}
        # which videos each rank trained on: equal step counts, disjoint shards
        write_text(files.rank_record(rank, epoch),
                   json.dumps({"rank": rank, "world": world, "epoch": epoch, "pid": os.getpid(),
                               "steps": len(losses), "videos": sorted(seen)}) + "\n")
        checkpoint = None
        if rank == 0:
            precise_bn(model, bn_loader, cfg.precise_bn_batches, device)
            val = evaluate_e2e(model, val_loader, info, state)
            improved = not val["mAP"] <= best_map
            if improved:
                best_map = val["mAP"] if not math.isnan(val["mAP"]) else best_map
                save_checkpoint(best, {"model": model.state_dict(), "epoch": epoch + 1,
                                       "val": plain(summary(val))})
            rec.update(val_mAP=val["mAP"], val_top1=val["top1"],
                       val_gflops_mean=val["gflops_mean"])
            log.info("epoch %d/%d loss %.4f val mAP %.4f top1 %.4f GFLOPs/video %.2f%s",
                     epoch + 1, cfg.epochs, rec["train_loss"], val["mAP"], val["top1"],
                     val["gflops_mean"], " *" if improved else "")
            records.append(rec)
            save_checkpoint(last, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "epoch": epoch + 1,
                                   "step": state.step, "best_map": float(best_map),
                                   "records": plain(records), "rng": rng_state(device),
                                   "config": resolved})
            write_text(files.metrics, "".join(json.dumps(r) + "\n" for r in records))
            checkpoint = last
        else:
            records.append(rec)
        if on_epoch is not None:
            on_epoch(epoch, rec, checkpoint)
    if rank == 0:
        state.stage = plan[-1]
        finish_run(cfg, model, info, setup.classes, eval_spec, device, state)
    return run


def finish_run(cfg: FinetuneConfig, model: EndToEnd, info, classes: list[str],
               eval_spec: ClipSpec, device: torch.device, state: TrainState) -> None:
    """Best weights -> test evaluation (eval.json) -> RUN/export/VIEW.pth for every view."""
    from trainers.export import export_backbones

    files = RunDir(cfg.out)
    best = files.checkpoint(BEST)
    ck = load_checkpoint(best, map_location=device)
    model.load_state_dict(ck["model"])
    urls = shard_urls(cfg.shards)
    dec = {"decoder": resolve_clip_decoder(cfg.jpeg_decoder, device), "device": device}
    spec = method_spec(cfg.method)
    if spec.after_training:
        # e.g. C2F measures its training error rates (eq. 5) on the final weights
        train = clip_loader(urls, eval_spec, classes, "train", cfg.batch_size, **dec)
        load_ref(spec.after_training)(model.method, EncodedLoader(model, train))
        save_checkpoint(best, {**ck, "model": model.state_dict()})
    export_backbones(model.encoder, files.root)
    loader = clip_loader(urls, eval_spec, classes, cfg.eval_split, cfg.batch_size, **dec)
    if len(loader) == 0:
        raise ValueError(f"shards {cfg.shards} hold no {cfg.eval_split!r} videos")
    state.training = False
    result = evaluate_e2e(model, loader, info, state)
    write_eval(files.root, result, {"end_to_end": True, "best_epoch": ck["epoch"]})
    log.info("test (%s): mAP %.4f top1 %.4f GFLOPs/video %.2f", cfg.eval_split,
             result["mAP"], result["top1"], result["gflops_mean"])
