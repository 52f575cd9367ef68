"""Shared fixtures: one embedded Ray per test session and one tiny synthetic dataset.

Both are session-scoped because starting Ray (seconds) and encoding videos are the slowest
setup steps; tests only read from them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline.synth import SynthConfig, make_synthetic_dataset

# A few very short, small videos: 2 classes x 3 videos, so train, val and test each hold one
# video of each class; codecs rotate H.264, VP9, MJPEG.
TINY_CONFIG = SynthConfig(
    videos=6, classes=2, seed=7, width=160, height=120, fps=10.0, min_duration=2.0,
    max_duration=3.0,
)


class TinyDataset(NamedTuple):
    """Unpacks as `(root, manifest)`; `root/videos` holds the files, `root/classes.txt` the class
    names and `root/synth.json` the ground truth (segments) of each video."""

    root: Path
    manifest: Path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tests use tiny models; on a 2-core machine several torch threads per process slow tiny
    ops down many times (measured: a small LSTM step 118 ms with 2 threads, 6 ms with 1).
    OMP_NUM_THREADS=1 keeps `c2f train` (trainers/threads.py) and subprocesses at 1 too."""
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    """An embedded Ray with 2 CPUs for the whole session (`address='local'` so a cluster that
    someone started with `ray start` on this machine is never joined by accident)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """Six generated 2-3 s videos (160x120, 10 fps) with manifest.parquet, made once."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    make_synthetic_dataset(root, TINY_CONFIG)
    return TinyDataset(root=root, manifest=root / "manifest.parquet")
