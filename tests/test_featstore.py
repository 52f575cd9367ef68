"""Feature store: writer/reader round trip, failure modes, workers, and the documented format.

All features are generated random arrays written to real HDF5 files in a temp dir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from featstore import (
    StoreError,
    StoreWriter,
    ViewSpec,
    build_catalog,
    list_parts,
    open_store,
    validate,
)

VIEWS = {
    "coarse": ViewSpec(dim=8, backbone="mobilenet_v2", input_size=112,
                       attrs={"mean": [0.485, 0.456, 0.406], "weights_sha256": "random-init"}),
    "fine": ViewSpec(dim=12, backbone="resnet101", input_size=224),
}
STAGES = {"fine": {"res1": 3, "res2": 5}}


def make_videos(n: int, seed: int = 0, prefix: str = "vid") -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    videos = {}
    for i in range(n):
        t = int(rng.integers(1, 40))
        videos[f"{prefix}{i}"] = {
            "labels": [["cat"], ["dog", "cat"], []][i % 3],
            "split": ["train", "val"][i % 2],
            "timestamps": np.arange(t) * 0.5 + i,
            "features": {v: rng.standard_normal((t, s.dim)) for v, s in VIEWS.items()},
            "logits": {"coarse": rng.standard_normal((t, 4))},
            "stages": {"fine": {k: rng.standard_normal((t, d)) for k, d in STAGES["fine"].items()}},
        }
    return videos


def write_part(store: Path, part: str, videos: dict[str, dict]) -> Path:
    with StoreWriter(store, part, VIEWS, stage_dims=STAGES, logits_dim={"coarse": 4},
                     attrs={"sampling": {"fps": 1.0}, "code_version": "test"}) as w:
        for vid, v in videos.items():
            w.add_video(vid, v["labels"], v["split"], v["timestamps"], v["features"],
                        logits=v["logits"], stages=v["stages"])
    return w.path


@pytest.fixture
def two_part_store(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    a, b = make_videos(5, seed=1, prefix="a"), make_videos(4, seed=2, prefix="b")
    write_part(tmp_path, "shard-000000", a)
    write_part(tmp_path, "shard-000001", b)
    build_catalog(tmp_path)
    return tmp_path, {**a, **b}


def test_round_trip_returns_what_was_written(two_part_store):
    store_dir, videos = two_part_store
    s = open_store(store_dir)
    assert s.views == ["coarse", "fine"]
    assert s.view_attrs("coarse")["mean"] == [0.485, 0.456, 0.406]
    assert s.view_attrs("fine")["dim"] == 12 and s.view_attrs("fine")["backbone"] == "resnet101"
    assert s.classes == ["cat", "dog"]
    assert sorted(s.video_ids()) == sorted(videos)
    assert set(s.video_ids("val")) == {k for k, v in videos.items() if v["split"] == "val"}
    assert s.stage_names("fine") == ["res1", "res2"] and s.stage_names("coarse") == []
    assert s.attrs["sampling"] == {"fps": 1.0}
    for vid, v in videos.items():
        for view in VIEWS:
            got = s.read(vid, view)
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, v["features"][view].astype(np.float16))
        np.testing.assert_array_equal(s.timestamps(vid), v["timestamps"])
        np.testing.assert_array_equal(s.read_logits(vid, "coarse"),
                                      v["logits"]["coarse"].astype(np.float16))
        stages = s.read_stages(vid, "fine")
        assert list(stages) == ["res1", "res2"]
        np.testing.assert_array_equal(stages["res2"], v["stages"]["fine"]["res2"].astype("f2"))
        assert s.labels(vid) == v["labels"] and s.split(vid) == v["split"]
    assert s.catalog.column_names == ["video_id", "part", "offset", "length", "labels", "split"]
    assert validate(store_dir) == []


def test_iter_batches_covers_split_once_and_shuffles_by_seed(two_part_store):
    store_dir, videos = two_part_store
    s = open_store(store_dir)
    batches = list(s.iter_batches(["coarse", "fine"], batch_size=2, split="train",
                                  shuffle=True, seed=3))
    ids = [vid for b in batches for vid, _ in b]
    assert sorted(ids) == sorted(s.video_ids("train")) and all(len(b) <= 2 for b in batches)
    vid, arrays = batches[0][0]
    np.testing.assert_array_equal(arrays["fine"], videos[vid]["features"]["fine"].astype("f2"))
    again = [vid for b in s.iter_batches(["coarse"], 2, "train", shuffle=True, seed=3)
             for vid, _ in b]
    assert again == ids


def test_writer_rejects_bad_input_and_leaves_no_part(tmp_path):
    w = StoreWriter(tmp_path, "shard-000000", VIEWS)
    t = np.arange(3.0)
    with pytest.raises(ValueError, match="shape"):
        w.add_video("x", [], "train", t, {"coarse": np.zeros((3, 7)), "fine": np.zeros((3, 12))})
    with pytest.raises(ValueError, match="views"):
        w.add_video("x", [], "train", t, {"coarse": np.zeros((3, 8))})
    with pytest.raises(ValueError, match="non-finite"):
        w.add_video("x", [], "train", t, {"coarse": np.full((3, 8), 1e6), "fine": np.zeros((3, 12))})
    w.add_video("x", [], "train", t, {"coarse": np.zeros((3, 8)), "fine": np.zeros((3, 12))})
    with pytest.raises(ValueError, match="twice"):
        w.add_video("x", [], "train", t, {"coarse": np.zeros((3, 8)), "fine": np.zeros((3, 12))})
    assert w.tmp_path.exists() and not w.path.exists()
    w.abort()
    assert not w.tmp_path.exists() and list_parts(tmp_path) == []


def test_unfinished_writer_is_invisible_and_finished_part_is_never_rewritten(tmp_path):
    write_part(tmp_path, "shard-000000", make_videos(2))
    pending = StoreWriter(tmp_path, "shard-000001", VIEWS)  # a "killed" writer's temp file
    assert list_parts(tmp_path) == ["shard-000000"]
    build_catalog(tmp_path)
    assert len(open_store(tmp_path)) == 2
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(tmp_path, "shard-000000", VIEWS)
    pending.abort()


def test_truncated_part_is_reported_by_validate_and_reader(two_part_store):
    store_dir, videos = two_part_store
    path = store_dir / "parts" / "shard-000001.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problems = validate(store_dir)
    assert [p.part for p in problems] == ["shard-000001"]
    assert "truncated or corrupt" in str(problems[0])
    s = open_store(store_dir)
    np.testing.assert_array_equal(s.read("a0", "coarse"),
                                  videos["a0"]["features"]["coarse"].astype("f2"))
    with pytest.raises(StoreError, match="shard-000001"):
        s.read("b0", "coarse")


def test_flipped_feature_bytes_are_caught_by_validate(two_part_store):
    store_dir, _ = two_part_store
    path = store_dir / "parts" / "shard-000000.h5"
    with h5py.File(path, "r") as f:
        offset = f["views/fine/features"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        fh.write(b"\x12\x34")
    problems = validate(store_dir)
    assert len(problems) == 1 and problems[0].part == "shard-000000"
    assert "views/fine/features" in problems[0].message and "crc32" in problems[0].message


def test_catalog_mismatches_are_reported(two_part_store):
    store_dir, _ = two_part_store
    write_part(store_dir, "shard-000002", make_videos(2, prefix="c"))
    problems = validate(store_dir)
    assert {p.part for p in problems} == {"shard-000002"}
    assert all("missing from the catalog" in p.message for p in problems)
    (store_dir / "parts" / "shard-000000.h5").unlink()
    messages = [str(p) for p in validate(store_dir)]
    assert any("shard-000000" in m and "does not exist" in m for m in messages)


def test_duplicate_video_across_parts_refuses_catalog(tmp_path):
    write_part(tmp_path, "shard-000000", make_videos(2))
    write_part(tmp_path, "shard-000001", make_videos(1))
    with pytest.raises(StoreError, match="shard-000000.*shard-000001"):
        build_catalog(tmp_path)


class StoreDataset(Dataset):
    """What a trainer writes: a map-style dataset over a store, shared with the workers."""

    def __init__(self, store_dir: Path) -> None:
        self.store = open_store(store_dir)
        self.ids = self.store.video_ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, int, torch.Tensor, torch.Tensor]:
        vid = self.ids[i]
        arrays = self.store.read_views(vid, ["coarse", "fine"])
        return vid, os.getpid(), torch.from_numpy(arrays["coarse"]), torch.from_numpy(
            arrays["fine"])


def test_dataloader_workers_read_correct_arrays(two_part_store):
    store_dir, videos = two_part_store
    ds = StoreDataset(store_dir)
    ds.store.read(ds.ids[0], "coarse")  # the parent holds open handles before the fork
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    pids = set()
    for vid, pid, coarse, fine in loader:
        pids.add(pid)
        np.testing.assert_array_equal(coarse.numpy(), videos[vid]["features"]["coarse"].astype("f2"))
        np.testing.assert_array_equal(fine.numpy(), videos[vid]["features"]["fine"].astype("f2"))
    assert len(pids) == 2 and os.getpid() not in pids
    np.testing.assert_array_equal(ds.store.read("b1", "fine"),
                                  videos["b1"]["features"]["fine"].astype("f2"))


def test_independent_writer_following_the_doc(tmp_path):
    """Write a store with plain h5py + pyarrow as docs/featstore.md says, read it with ours."""
    rng = np.random.default_rng(5)
    ids, lengths = ["v-one", "v-two"], [3, 2]
    feats = rng.standard_normal((5, 6)).astype("<f2")
    ts = np.array([0.0, 1.0, 2.0, 0.0, 1.0], dtype="<f8")
    text = h5py.string_dtype("utf-8")
    (tmp_path / "parts").mkdir()
    with h5py.File(tmp_path / "parts" / "p0.h5", "w") as f:
        f.attrs.update({"schema": "c2f-featstore", "schema_version": 1, "part": "p0",
                        "complete": True, "created_utc": "2026-01-01T00:00:00+00:00",
                        "views.json": json.dumps(["rgb"]), "num_videos": 2, "num_frames": 5})
        f.create_dataset("videos/id", data=ids, dtype=text)
        f.create_dataset("videos/offset", data=np.array([0, 3], dtype=np.int64))
        f.create_dataset("videos/length", data=np.array(lengths, dtype=np.int64))
        f.create_dataset("videos/labels", data=['["jump"]', '[]'], dtype=text)
        f.create_dataset("videos/split", data=["train", "test"], dtype=text)
        f.create_dataset("timestamps", data=ts)
        g = f.create_group("views/rgb")
        g.attrs.update({"dim": 6, "backbone": "resnet18", "input_size": 64,
                        "mean.json": json.dumps([0.5, 0.5, 0.5])})
        g.create_dataset("features", data=feats)
    catalog = pa.table({"video_id": ids, "part": ["p0", "p0"], "offset": [0, 3],
                        "length": lengths, "labels": [["jump"], []], "split": ["train", "test"]},
                       schema=pa.schema([("video_id", pa.string()), ("part", pa.string()),
                                         ("offset", pa.int64()), ("length", pa.int64()),
                                         ("labels", pa.list_(pa.string())),
                                         ("split", pa.string())]))
    pq.write_table(catalog, tmp_path / "catalog.parquet")
    s = open_store(tmp_path)
    assert s.views == ["rgb"] and s.view_attrs("rgb")["mean"] == [0.5, 0.5, 0.5]
    np.testing.assert_array_equal(s.read("v-two", "rgb"), feats[3:])
    np.testing.assert_array_equal(s.timestamps("v-one"), ts[:3])
    assert s.labels("v-one") == ["jump"] and s.split("v-two") == "test"
    assert validate(tmp_path) == []
