"""Many workers: the same per-worker loop (`trainers.finetune.train_worker`) under Ray Train.

The loop is passed in by `trainers.finetune.finetune` (which also prepared RUN), so this
module does not import trainers.finetune and the two cannot form an import cycle.

`ray.train.torch.TorchTrainer` starts `workers` processes, sets up torch.distributed (gloo on
CPU, NCCL with GPUs) and the loop wraps the model in DDP. Each epoch every rank calls
`ray.train.report` (a barrier); rank 0 attaches the checkpoint it just wrote, so Ray keeps
the latest one in its storage and `FailureConfig(max_failures)` restarts a failed worker
group from it (`ray.train.get_checkpoint()`). RUN/ itself is written by rank 0 only.

Storage: a single-node run keeps Ray's checkpoints under RUN/ray. A run on a cluster of more
than one node needs `storage` (a path every node mounts, or object storage such as s3://),
since a restarted worker on another node must read the checkpoint; without it the run is
refused before anything starts.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from trainers.finetune_config import FinetuneConfig, finetune_config_from_dict
from trainers.rundir import CHECKPOINT_SUFFIX, LAST, RAY

#: the file name of last.pt inside a Ray Train checkpoint directory
RAY_CHECKPOINT = LAST + CHECKPOINT_SUFFIX

log = logging.getLogger(__name__)


#: `trainers.finetune.train_worker`'s signature
WorkerLoop = Callable[..., Path]


def _worker(config: dict, loop: WorkerLoop) -> None:
    """Ray Train's per-worker function: rebuild the config, resume from Ray's checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = finetune_config_from_dict(config["cfg"])
    if cfg.gpus_per_worker > 0:
        cfg.device = str(ray.train.torch.get_device())  # this worker's GPU
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        local = Path(checkpoint.to_directory()) / RAY_CHECKPOINT
        resume = local if local.exists() else None

    def report(epoch: int, record: dict, last: Path | None) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if last is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(last, Path(tmp) / RAY_CHECKPOINT)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    loop(cfg, stop_after_epochs=config.get("stop_after_epochs"), on_epoch=report,
         resume_from=resume)


def _nodes_alive() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def finetune_with_ray(cfg: FinetuneConfig, loop: WorkerLoop, *,
                      stop_after_epochs: int | None = None, threads_per_worker: int = 1) -> Path:
    """Run `loop` for `cfg` on `cfg.workers` Ray Train workers; returns RUN (resumes a re-run).

    RUN must already hold cfg's config.json (`trainers.finetune.prepare_run_dir`)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run = Path(cfg.out)
    if not ray.is_initialized():
        ray.init(address=cfg.address or "local", include_dashboard=False,
                 log_to_driver=False)
    if _nodes_alive() > 1 and not cfg.storage:
        raise RuntimeError(
            "this Ray cluster has more than one node: give --storage a path every node "
            "mounts (or s3://...) so a restarted worker can read the last checkpoint")
    use_gpu = cfg.gpus_per_worker > 0
    resources = {"CPU": threads_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        functools.partial(_worker, loop=loop),
        train_loop_config={"cfg": cfg.to_dict(), "stop_after_epochs": stop_after_epochs,
                           "threads": threads_per_worker},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RAY, storage_path=cfg.storage or str(run),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()
    return run
