"""featstore.storage on local paths and on a filesystem only fsspec knows (`memory://`), and
shards streamed from such a URL through webdataset."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from featstore import storage
from pipeline.reader import read_shards
from pipeline.shards import open_tar_writer, sample_dict


def test_urls_and_paths_are_told_apart_and_joined(tmp_path):
    assert storage.scheme("s3://b/k") == "s3" and storage.scheme("file:///x") is None
    assert storage.is_remote("gs://b/k") and not storage.is_remote(tmp_path / "x")
    assert storage.join("s3://b/dir/", "parts", "p.h5") == "s3://b/dir/parts/p.h5"
    assert storage.join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")
    assert storage.absolute("s3://b/k") == "s3://b/k"


def test_a_failed_write_publishes_nothing(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), storage.output_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), storage.output_path("memory://c2f-fail/out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert not storage.exists("memory://c2f-fail/out.bin") and not tmp.exists()


def test_fsspec_only_scheme_round_trips_and_streams_shards():
    root = "memory://c2f-test"
    storage.write_parquet(pa.table({"a": [1, 2]}), f"{root}/t.parquet")
    assert storage.read_parquet(f"{root}/t.parquet").column("a").to_pylist() == [1, 2]
    with (
        storage.output_path(f"{root}/shards/shard-000000.tar") as tmp,
        open(tmp, "wb") as fh,
        open_tar_writer(fh) as tar,
    ):
        for v in range(2):
            meta = {"video_id": f"v{v}", "num_frames": 2}
            tar.write(sample_dict([(f"k{v}.0000.jpg", b"a"), (f"k{v}.0001.jpg", b"b"),
                                   (f"k{v}.json", json.dumps(meta).encode())]))
    assert storage.list_names(f"{root}/shards") == ["shard-000000.tar"]
    samples = list(read_shards(f"{root}/shards", decode_frames=False))
    assert [(s.key, s.meta["video_id"], s.jpegs) for s in samples] == [
        ("k0", "v0", [b"a", b"b"]), ("k1", "v1", [b"a", b"b"])]
