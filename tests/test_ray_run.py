"""Running plans: in-process vs a real embedded Ray, failures, progress, and `c2f submit` against
a real local Ray head started with `ray start`. Data comes from the generated tiny dataset."""

from __future__ import annotations

import io
import json
import math
import operator
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from cluster.executor import RunError, run_plans
from cluster.progress import Progress
from cluster.submit import JobOutcome, auth_headers
from pipeline.manifest import read_manifest
from pipeline.shards import ShardResult, finalize, plan_shards, write_shard
from pipeline.types import FrameFormat, SamplingPlan
from trainers.rundir import EVAL, SWEEP_TABLE


def test_inprocess_failure_names_the_plan_and_keeps_the_rest() -> None:
    seen: list[float] = []
    with pytest.raises(RunError) as info:
        run_plans(math.sqrt, [4.0, -1.0, 9.0], mode="inprocess", on_result=seen.append)
    assert info.value.results == [2.0, None, 3.0]
    assert [f.position for f in info.value.failures] == [1]
    assert "plan 1: ValueError: math domain error" in str(info.value)
    assert seen == [2.0, 3.0]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        run_plans(abs, [1], mode="threads")


def test_ray_keeps_plan_order_and_leaves_an_existing_ray_running(ray_local) -> None:
    plans = list(range(30))
    seen: list[int] = []
    results = run_plans(operator.neg, plans, mode="local", on_result=seen.append)
    assert results == [-p for p in plans]
    assert sorted(seen) == sorted(results)
    assert ray_local.is_initialized()


def test_ray_failure_names_the_plan_and_keeps_the_rest(ray_local) -> None:
    with pytest.raises(RunError) as info:
        run_plans(math.sqrt, [4.0, -1.0, 9.0], mode="local")
    assert info.value.results == [2.0, None, 3.0]
    assert "plan 1" in str(info.value) and "math domain error" in str(info.value)


def test_local_ray_shards_are_byte_identical_to_inprocess(ray_local, tiny_dataset, tmp_path):
    table = read_manifest(tiny_dataset.manifest)
    outputs = {}
    for mode in ("inprocess", "local"):
        out = tmp_path / mode
        plans = plan_shards(table, out, sampling=SamplingPlan(fps=1.0), fmt=FrameFormat(64),
                            videos_per_shard=3)
        results = run_plans(write_shard, plans, mode=mode)
        assert [r.index for r in results] == [p.index for p in plans]
        assert sum(r.videos_ok for r in results) == table.num_rows
        finalize(out)
        outputs[mode] = out
    tars = sorted(p.name for p in outputs["inprocess"].glob("shard-*.tar"))
    assert tars == sorted(p.name for p in outputs["local"].glob("shard-*.tar")) and tars
    for name in tars:
        assert (outputs["inprocess"] / name).read_bytes() == (outputs["local"] / name).read_bytes()
    index_a = pq.read_table(outputs["inprocess"] / "index.parquet")
    assert index_a.equals(pq.read_table(outputs["local"] / "index.parquet"))


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def result(index: int, ok: int, failed: int, frames: int, skipped: bool = False) -> ShardResult:
    return ShardResult(index=index, path=f"shard-{index}.tar", videos_ok=ok, videos_failed=failed,
                       frames=frames, bytes=0, skipped=skipped, seconds=0.0)


def test_progress_reports_rates_and_eta_at_most_every_interval() -> None:
    clock, stream = StepClock(), io.StringIO()
    progress = Progress(4, total_videos=8, interval=2.0, stream=stream, clock=clock)
    clock.now = 1.0
    progress.update(result(0, 2, 0, 20))
    assert stream.getvalue() == ""  # not yet 2 s since the start
    clock.now = 2.0
    progress.update(result(1, 1, 1, 10))
    assert stream.getvalue() == (
        "[c2f] 2/4 shards | 4/8 videos (1 failed) | 2.00 videos/s | 15.0 frames/s | ETA 2s\n"
    )
    clock.now = 3.0
    progress.update(result(2, 2, 0, 20, skipped=True))
    assert progress.lines_written == 1
    clock.now = 4.0
    summary = progress.close()
    assert summary.startswith("done: 3/4 shards (1 already finished), 5 videos ok, 1 failed")
    assert "1.00 videos/s" in summary and stream.getvalue().endswith(summary + "\n")


# ------------------------------------------------------------------ c2f submit on a real head


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A one-CPU Ray head with its job server, in its own session and temp folder, shared by
    this module's jobs (starting it takes ~15 s); stopped by signalling the processes it
    started (never `ray stop`, which would hit every Ray here)."""
    gcs, dashboard, client, agent = free_ports(4)
    temp = Path(tempfile.mkdtemp(prefix="c2f-ray-", dir="/tmp"))  # short: socket path limit
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--num-cpus", "1", "--temp-dir", str(temp), "--include-dashboard", "true",
           "--disable-usage-stats"]
    with open(temp / "head.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering (e.g. 401 without a token) means the job server is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"Ray head did not start: {(temp / 'head.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_submit_runs_c2f_shards_as_a_ray_job(ray_head, tiny_dataset, tmp_path, capsys) -> None:
    out = tmp_path / "shards"
    job_dir = tmp_path / "job"  # uploaded; the job reads its manifest by a relative path
    job_dir.mkdir()
    shutil.copy(tiny_dataset.manifest, job_dir / "m.parquet")
    code = main(["submit", "--address", ray_head, "--working-dir", str(job_dir), "--", "c2f",
                 "shards", "--manifest", "m.parquet", "--out", str(out), "--mode", "cluster",
                 "--short-side", "64", "--videos-per-shard", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "submitted job" in printed and "SUCCEEDED (exit code 0)" in printed
    assert '"videos_ok": 6' in printed  # the job's own output, streamed back
    assert pq.read_table(out / "index.parquet").num_rows == 6


@pytest.mark.slow
def test_submit_runs_train_and_sweep_as_ray_jobs_equal_to_direct_runs(ray_head, tmp_path,
                                                                      capsys) -> None:
    """`c2f train` and `c2f sweep --mode cluster` in a submitted job (the sweep's points run as
    Ray tasks of the job's cluster) give the results of the sweep run here, point by point;
    the submitted `train` is the sweep's frames=4 point (a sweep point is that `train`)."""
    store = tmp_path / "store"
    assert main(["synthetic", str(store), "--videos", "24", "--min-frames", "6",
                 "--max-frames", "8", "--seed", "3"]) == 0
    common = ["uniform", "--store", str(store), "--epochs", "1", "--batch-size", "8",
              "--threads", "1"]
    sweep = ["sweep", *common, "--knob", "frames=2,4"]
    direct, job = tmp_path / "direct", tmp_path / "job"
    assert main([*sweep, "--out", str(direct)]) == 0
    capsys.readouterr()
    train = ["c2f", "train", *common, "--set", "frames=4", "--out", str(job / "train")]
    on_ray = ["c2f", *sweep, "--out", str(job / "sweep"), "--mode", "cluster",
              "--gpus-per-trial", "0", "--cpus-per-trial", "0.5"]
    # One job runs both, as a user's job script would: `c2f submit -- bash -c '...'`.
    code = main(["submit", "--address", ray_head, "--", "bash", "-c",
                 f"{shlex.join(train)} && {shlex.join(on_ray)}"])
    printed = capsys.readouterr().out
    assert code == 0 and "SUCCEEDED (exit code 0)" in printed, printed
    assert json.loads((job / "train" / EVAL).read_text()) == json.loads(
        (direct / "frames=4" / EVAL).read_text())
    table = (job / "sweep" / SWEEP_TABLE).read_text()
    assert table == (direct / SWEEP_TABLE).read_text() and "frames=4" in table
    for point in ("frames=2", "frames=4"):
        assert json.loads((job / "sweep" / point / EVAL).read_text()) == json.loads(
            (direct / point / EVAL).read_text())


def test_submit_exits_with_the_driver_code_else_by_status() -> None:
    assert JobOutcome("j", "FAILED", 2).process_exit_code == 2
    assert JobOutcome("j", "STOPPED", None).process_exit_code == 1
    assert JobOutcome("j", "SUCCEEDED", None).process_exit_code == 0


def test_submit_sends_the_local_ray_token_unless_auth_is_disabled(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("secret\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert auth_headers() == {"Authorization": "Bearer secret"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
