"""Object storage end to end against a real S3-compatible server: moto's server mode, started
once per session on 127.0.0.1 with authentication on (an IAM user whose keys the tests use).

Shards to s3 (videos and manifest in s3 too), an interrupted run resumed, a store written to s3
with StoreWriter and trained on through the bounded part cache, and refused credentials or a
missing bucket stopping a command before any work.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pytest
from media import make_video

from cluster.cli import main
from featstore import StoreWriter, ViewSpec, build_catalog, open_store, storage
from featstore.cache import CACHE_DIR_ENV, CACHE_GB_ENV
from featstore.writer import RESERVED_FILE_ATTRS, RESERVED_VIEW_ATTRS
from pipeline.manifest import write_manifest
from pipeline.reader import read_shards
from pipeline.shard_worker import DecodeWorker
from pipeline.shards import plan_shards, write_shard
from pipeline.types import FrameFormat, SamplingPlan
from trainers.synthetic import make_synthetic_store

REGION = "us-east-1"
SHARD_ARGS = ["--fps", "2", "--short-side", "48", "--jpeg-quality", "85", "--backend", "pyav",
              "--videos-per-shard", "2", "--mode", "inprocess"]
_buckets = count()


class S3Server(NamedTuple):
    endpoint: str
    access_key: str
    secret_key: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _boto(server: S3Server, service: str):
    import boto3

    return boto3.client(service, endpoint_url=server.endpoint, region_name=REGION,
                        aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto in server mode on 127.0.0.1. The first 3 requests (make a user, allow it everything,
    give it keys) run unauthenticated; every later request must be signed with those keys."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_file = tmp_path_factory.mktemp("moto") / "server.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log_file.read_text()}")
                time.sleep(0.1)
        iam = _boto(S3Server(endpoint, "setup", "setup"), "iam")
        iam.create_user(UserName="c2f")
        iam.put_user_policy(UserName="c2f", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="c2f")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket, with the standard AWS variables pointing at the server and local temps
    under tmp_path; returns `s3://<bucket>`."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv(storage.STAGING_ENV, str(tmp_path / "staging"))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    name = f"c2f-test-{os.getpid()}-{next(_buckets)}"
    _boto(s3_server, "s3").create_bucket(Bucket=name)
    return f"s3://{name}"


def _objects(s3_server: S3Server, url: str) -> list[str]:
    name = url.removeprefix("s3://")
    found = _boto(s3_server, "s3").list_objects_v2(Bucket=name).get("Contents", [])
    return sorted(o["Key"] for o in found)


def _interrupt(*args: object) -> None:
    raise KeyboardInterrupt("stopped mid-shard")


def test_shards_on_s3_resume_skips_published_shards(bucket, tmp_path, caplog, monkeypatch):
    local = [make_video(tmp_path / f"v{i}.mp4", n=20, fps=10.0, size=(64, 48)) for i in range(3)]
    for path in local:
        storage.upload(path, f"{bucket}/videos/{path.name}")
    manifest = pa.table({
        "video_id": [p.stem for p in local],
        "path": [f"{bucket}/videos/{p.name}" for p in local],
        "labels": [["a"], ["b"], ["a"]],
        "split": ["train"] * 3,
        "duration": pa.array([2.0] * 3, pa.float64()),
    })
    write_manifest(manifest, f"{bucket}/manifest.parquet")
    out = f"{bucket}/shards"
    # An interrupted run: the first shard is published, the second is stopped mid-write.
    plans = plan_shards(manifest, out, sampling=SamplingPlan(fps=2.0),
                        fmt=FrameFormat(short_side=48, jpeg_quality=85), backend="pyav",
                        videos_per_shard=2)
    write_shard(plans[0])
    with monkeypatch.context() as m:
        m.setattr(DecodeWorker, "run", _interrupt)
        with pytest.raises(KeyboardInterrupt):
            write_shard(plans[1])
    assert storage.list_names(out) == ["settings.json", "shard-000000.meta.json",
                                       "shard-000000.tar"]
    assert not list((tmp_path / "staging").iterdir())

    caplog.set_level(logging.INFO)
    assert main(["shards", "--manifest", f"{bucket}/manifest.parquet", "--out", out,
                 *SHARD_ARGS]) == 0
    skipped = [r.getMessage() for r in caplog.records if "already complete" in r.getMessage()]
    assert skipped == [f"{out}/shard-000000.tar already complete; skipping"]

    index = storage.read_parquet(f"{out}/index.parquet").to_pylist()
    assert [(r["video_id"], r["status"], r["num_frames"]) for r in index] == [
        ("v0", "ok", 4), ("v1", "ok", 4), ("v2", "ok", 4)]
    assert storage.read_parquet(f"{out}/errors.parquet").num_rows == 0
    samples = list(read_shards(out, decode_frames=False))
    assert [(s.meta["video_id"], s.meta["path"], len(s.jpegs)) for s in samples] == [
        (f"v{i}", f"{bucket}/videos/v{i}.mp4", 4) for i in range(3)]

    # The same run to a local folder gives the same bytes; staged videos were all removed.
    assert main(["shards", "--manifest", f"{bucket}/manifest.parquet",
                 "--out", str(tmp_path / "local"), *SHARD_ARGS]) == 0
    for name in ("shard-000000.tar", "shard-000001.tar", "index.parquet"):
        assert storage.read_bytes(f"{out}/{name}") == (tmp_path / "local" / name).read_bytes()
    assert not list((tmp_path / "staging").iterdir())

    # Features from the s3 shards into an s3 store equal those of the local run; a re-run skips.
    extract = ["--view", "b=mobilenet_v2@48", "--mode", "inprocess", "--batch-size", "4",
               "--threads", "1"]
    store = f"{bucket}/store"
    assert main(["extract", "--shards", out, "--out", store, *extract]) == 0
    assert main(["extract", "--shards", str(tmp_path / "local"),
                 "--out", str(tmp_path / "store"), *extract]) == 0
    caplog.clear()
    assert main(["extract", "--shards", out, "--out", store, *extract]) == 0
    assert sum("exists: skipped" in r.getMessage() for r in caplog.records) == 2
    remote, local = open_store(store), open_store(tmp_path / "store")
    assert remote.video_ids() == local.video_ids() == ["v0", "v1", "v2"]
    for vid in local.video_ids():
        np.testing.assert_array_equal(remote.read(vid, "b"), local.read(vid, "b"))

    # One pass (`c2f build`) from the s3 manifest to s3 shards and an s3 store: same features.
    built = f"{bucket}/built"
    assert main(["build", "--manifest", f"{bucket}/manifest.parquet",
                 "--shards-out", f"{built}/shards", "--out", f"{built}/store", *SHARD_ARGS,
                 *extract]) == 0
    one_pass = open_store(f"{built}/store")
    assert one_pass.video_ids() == ["v0", "v1", "v2"]
    for vid in local.video_ids():
        np.testing.assert_array_equal(one_pass.read(vid, "b"), local.read(vid, "b"))


def test_missing_bucket_or_refused_credentials_stop_before_any_work(
    bucket, s3_server, tmp_path, monkeypatch, capsys
):
    manifest = tmp_path / "m.parquet"
    write_manifest(pa.table({
        "video_id": ["v0"], "path": [str(tmp_path / "v0.mp4")], "labels": [["a"]],
        "split": ["train"], "duration": pa.array([2.0], pa.float64()),
    }), manifest)
    code = main(["shards", "--manifest", str(manifest), "--out", "s3://no-such-bucket/shards",
                 *SHARD_ARGS])
    assert code == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    code = main(["train", "uniform", "--store", "s3://no-such-bucket/store",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code = main(["shards", "--manifest", str(manifest), "--out", f"{bucket}/shards",
                 *SHARD_ARGS])
    assert code == 2
    assert "credentials were refused" in capsys.readouterr().err
    assert _objects(s3_server, bucket) == []
    assert not (tmp_path / "run").exists()


def _copy_store(src_dir: Path, dest: str, parts: int) -> None:
    """Write the videos of a local store into `parts` parts at `dest` with StoreWriter.

    Views are declared at 32 px input: the trainer measures each backbone's FLOPs at its input
    size when it starts, which at 224 px would be most of this test's time."""
    src = open_store(src_dir)
    views = {}
    for view in src.views:
        attrs = src.view_attrs(view)
        views[view] = ViewSpec(dim=attrs["dim"], backbone=attrs["backbone"], input_size=32,
                               attrs={k: v for k, v in attrs.items()
                                      if k not in RESERVED_VIEW_ATTRS})
    ids = src.video_ids()
    first = ids[0]
    stage_dims = {v: {s: a.shape[1] for s, a in src.read_stages(first, v).items()}
                  for v in src.views if src.stage_names(v)}
    file_attrs = {k: v for k, v in src.attrs.items() if k not in RESERVED_FILE_ATTRS}
    for p in range(parts):
        with StoreWriter(dest, f"part-{p:03d}", views, stage_dims=stage_dims,
                         attrs=file_attrs) as writer:
            for vid in ids[p::parts]:
                writer.add_video(vid, src.labels(vid), src.split(vid), src.timestamps(vid),
                                 src.read_views(vid, src.views),
                                 stages={v: src.read_stages(vid, v) for v in stage_dims})


def test_store_on_s3_is_read_through_a_bounded_cache_and_trained_on(
    bucket, s3_server, tmp_path, monkeypatch
):
    local = make_synthetic_store(tmp_path / "local", videos=24, classes=4, frames=(6, 10))
    remote = f"{bucket}/store"
    with pytest.raises(RuntimeError), StoreWriter(remote, "aborted", {"x": ViewSpec(2, "b", 8)}):
        raise RuntimeError("writer fails mid-part")
    _copy_store(local, remote, parts=3)
    build_catalog(remote)
    assert _objects(s3_server, bucket) == [
        "store/catalog.parquet", *(f"store/parts/part-{p:03d}.h5" for p in range(3))]

    sizes = [storage.size(f"{remote}/parts/part-{p:03d}.h5") for p in range(3)]
    bound = int(1.5 * max(sizes))  # room for one part, not two
    ref = open_store(local)
    with open_store(remote, cache_bytes=bound) as store:
        assert sorted(store.video_ids()) == sorted(ref.video_ids())
        assert store.size_bytes() == sum(sizes) + storage.size(f"{remote}/catalog.parquet")
        for vid in ref.video_ids():  # round-robin parts: every read may stage and evict
            for view in ref.views:
                np.testing.assert_array_equal(store.read(vid, view), ref.read(vid, view))
            cached = store.part_cache.cached_parts()
            assert sum(p.stat().st_size for p in cached) <= bound and len(cached) == 1

    monkeypatch.setenv(CACHE_GB_ENV, str(bound / 1e9))
    run = tmp_path / "run"
    assert main(["train", "uniform", "--store", remote, "--out", str(run), "--epochs", "1",
                 "--batch-size", "8", "--set", "view=fine"]) == 0
    assert (run / "eval.json").exists()
    assert json.loads((run / "config.json").read_text())["store"] == remote
    assert not list((tmp_path / "staging").iterdir())
