"""Importing existing per-video caches (.npy and LiteEval .pth) into a store.

The caches are generated here: random arrays saved with numpy / torch.save.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.cli import main as c2f
from featstore import import_npy, import_pth, open_store, validate


def random_cache(rng: np.random.Generator, ids: list[str], dim: int) -> dict[str, np.ndarray]:
    return {vid: rng.standard_normal((int(rng.integers(2, 9)), dim)).astype(np.float32)
            for vid in ids}


def test_import_npy_two_views_with_csv_manifest(tmp_path: Path):
    rng = np.random.default_rng(0)
    ids = ["v1", "v2", "v3"]
    coarse = random_cache(rng, ids, 5)
    fine = {vid: rng.standard_normal((len(a), 7)).astype(np.float32) for vid, a in coarse.items()}
    for view, cache in (("coarse", coarse), ("fine", fine)):
        (tmp_path / view).mkdir()
        for vid, arr in cache.items():
            np.save(tmp_path / view / f"{vid}.npy", arr)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("video_id,labels,split\nv1,Skiing;Surfing,train\nv2,Skiing,test\n")
    store_dir = tmp_path / "store"
    parts = import_npy({"coarse": tmp_path / "coarse", "fine": tmp_path / "fine"}, store_dir,
                       manifest=manifest, backbone="resnet101", input_size=224, fps=2.0,
                       videos_per_part=1)
    assert [p.name for p in parts] == ["import-000000.h5", "import-000001.h5"]
    s = open_store(store_dir)
    assert s.video_ids() == ["v1", "v2"]  # v3 is not in the manifest: skipped
    assert s.labels("v1") == ["Skiing", "Surfing"] and s.split("v2") == "test"
    assert s.view_attrs("fine")["backbone"] == "resnet101"
    np.testing.assert_array_equal(s.read("v2", "fine"), fine["v2"].astype(np.float16))
    np.testing.assert_array_equal(s.timestamps("v1"), np.arange(len(coarse["v1"])) / 2.0)
    assert validate(store_dir) == []


def test_import_pth_liteeval_layout_without_manifest(tmp_path: Path):
    rng = np.random.default_rng(1)
    cache = random_cache(rng, ["a", "b"], 6)
    src = tmp_path / "fea"
    src.mkdir()
    for vid, arr in cache.items():
        torch.save({"fea": torch.from_numpy(arr)}, src / f"{vid}.pth")
    import_pth(src, tmp_path / "store", view="fine")
    s = open_store(tmp_path / "store")
    assert s.views == ["fine"] and s.classes == [] and s.video_ids("train") == ["a", "b"]
    np.testing.assert_array_equal(s.read("b", "fine"), cache["b"].astype(np.float16))


def test_import_refuses_views_with_different_videos(tmp_path: Path):
    for view, ids in (("x", ["a", "b"]), ("y", ["a"])):
        (tmp_path / view).mkdir()
        for vid in ids:
            np.save(tmp_path / view / f"{vid}.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="lacks 1 videos"):
        import_npy({"x": tmp_path / "x", "y": tmp_path / "y"}, tmp_path / "store")


def test_cli_import_npy(tmp_path: Path):
    (tmp_path / "coarse").mkdir()
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "coarse" / "clip.npy", arr)
    store = tmp_path / "store"
    assert c2f(["featstore", "import", "--format", "npy", "--from",
                f"coarse={tmp_path / 'coarse'}", "--out", str(store), "--backbone",
                "mobilenet_v2", "--input-size", "112"]) == 0
    s = open_store(store)
    assert s.view_attrs("coarse")["backbone"] == "mobilenet_v2"
    np.testing.assert_array_equal(s.read("clip", "coarse"), arr.astype(np.float16))
    assert c2f(["featstore", "import", "--format", "npy", "--from", "no-equals-sign",
                "--out", str(tmp_path / "other")]) == 2
