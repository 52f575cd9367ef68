"""Which torch device a worker runs its backbones on, decided where the worker runs.

The driver (often a CPU-only head node) cannot know whether the node that runs a task has a
GPU, so `--device cuda` is checked here, in the task. Ray gives a task that reserves GPUs its
own `CUDA_VISIBLE_DEVICES` (the GPU ids it reserved), so the task's GPU is always `cuda:0` of
its visible set; a task outside Ray sees whatever the user made visible and uses the first.
"""

from __future__ import annotations

import os
import socket

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def visible_gpu_ids() -> tuple[str, ...]:
    """GPU ids this process may use, as Ray (or the user) set them; () when none are set."""
    value = os.environ.get(VISIBLE_ENV)
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def hide_gpus() -> None:
    """Make this process, and the decoders it starts, see no GPU. For Ray task bodies that
    reserved none: Ray leaves CUDA_VISIBLE_DEVICES unset there, which means every GPU of the
    node, so DALI `mixed` (chosen by `auto`) would decode on GPU 0 beside the tasks that
    reserved it."""
    os.environ[VISIBLE_ENV] = ""


def worker_device(device: str) -> str:
    """'cpu' -> 'cpu'; 'cuda' -> 'cuda:0' (the first GPU this worker was assigned).

    Raises RuntimeError naming the host and its visible GPUs when CUDA is asked for here but
    torch sees none (a task scheduled on a node without a usable GPU or CUDA build of torch).
    """
    if device == "cpu":
        return "cpu"
    if device not in ("cuda", "cuda:0"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    import torch  # here, so probing what Ray assigned stays cheap in any process

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device cuda asked for, but torch sees no CUDA GPU on {socket.gethostname()} "
            f"({VISIBLE_ENV}={os.environ.get(VISIBLE_ENV)!r}, torch {torch.__version__})"
        )
    return "cuda:0"
