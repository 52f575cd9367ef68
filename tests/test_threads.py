"""`--threads` on c2f train / eval / sweep, and the default: the CPUs this process may use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cluster.cli import build_parser, main
from trainers.synthetic import make_synthetic_store
from trainers.threads import apply_threads, available_cpus, cgroup_cpu_quota, default_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "v2") == 3
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "v2") is None
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1") == 1
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path / "v1") is None
    assert cgroup_cpu_quota(tmp_path / "nothing") is None


def test_default_follows_affinity_not_the_core_count():
    assert available_cpus() <= len(os.sched_getaffinity(0))
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "os.environ.pop('OMP_NUM_THREADS', None); "
            "from trainers.threads import apply_threads; print(apply_threads(None))")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env, timeout=60)
    assert done.stdout.strip() == "1"


def test_omp_num_threads_is_an_explicit_choice(monkeypatch, keep_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads()[0] == available_cpus()
    assert apply_threads(2) == 2 and torch.get_num_threads() == 2


def test_inside_a_ray_task_the_reserved_cpus_count(ray_local):
    @ray_local.remote(num_cpus=1)
    def threads_in_task() -> int:
        from trainers.threads import ray_reserved_cpus

        return ray_reserved_cpus()

    assert ray_local.get(threads_in_task.remote()) == 1
    from trainers.threads import ray_reserved_cpus

    assert ray_reserved_cpus() is None  # the driver has nothing reserved


def test_threads_flag_is_honoured_by_train_eval_and_sweep(tmp_path, keep_threads):
    store = make_synthetic_store(tmp_path / "store", videos=16, classes=2, frames=(4, 6))
    run = tmp_path / "run"
    assert main(["train", "uniform", "--store", str(store), "--out", str(run), "--epochs", "2",
                 "--stop-after-epochs", "1", "--set", "view=coarse", "--threads", "3"]) == 0
    assert torch.get_num_threads() == 3
    assert main(["eval", str(run), "--which", "last", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    args = build_parser().parse_args(["sweep", "uniform", "--out", "o", "--knob", "frames=1",
                                      "--threads", "4"])
    from cluster.commands.training import _flags

    assert _flags(args)["threads"] == 4
    assert main(["train", "uniform", "--store", str(store), "--out", str(tmp_path / "bad"),
                 "--threads", "0"]) == 2
