"""Importing existing per-video caches (.npy and LiteEval .pth) into a store.

The caches are generated here: random arrays saved with numpy / torch.save.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.cli import main as c2f
from featstore import open_store, validate
from featstore.importers import ViewOrigin, import_npy, import_pth


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
                       {"coarse": ViewOrigin(gmacs=0.5), "fine": ViewOrigin("resnet101", 224)},
                       manifest=manifest, fps=2.0, videos_per_part=1)
    assert [p.name for p in parts] == ["import-000000.h5", "import-000001.h5"]
    s = open_store(store_dir)
    assert s.video_ids() == ["v1", "v2"]  # v3 is not in the manifest: skipped
    assert s.labels("v1") == ["Skiing", "Surfing"] and s.split("v2") == "test"
    assert s.view_attrs("fine")["backbone"] == "resnet101"
    assert s.view_attrs("coarse")["gmacs_per_frame"] == 0.5
    assert s.view_attrs("coarse")["backbone"] == "unknown"
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
    import_pth(src, tmp_path / "store", ViewOrigin(gmacs=1.0), view="fine")
    s = open_store(tmp_path / "store")
    assert s.views == ["fine"] and s.classes == [] and s.video_ids("train") == ["a", "b"]
    np.testing.assert_array_equal(s.read("b", "fine"), cache["b"].astype(np.float16))


def test_import_refuses_views_with_different_videos(tmp_path: Path):
    for view, ids in (("x", ["a", "b"]), ("y", ["a"])):
        (tmp_path / view).mkdir()
        for vid in ids:
            np.save(tmp_path / view / f"{vid}.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="lacks 1 videos"):
        import_npy({"x": tmp_path / "x", "y": tmp_path / "y"}, tmp_path / "store",
                   ViewOrigin(gmacs=1.0))


def test_cli_import_npy_with_per_view_backbone_and_gmacs(tmp_path: Path):
    (tmp_path / "coarse").mkdir()
    (tmp_path / "fine").mkdir()
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "coarse" / "clip.npy", arr)
    np.save(tmp_path / "fine" / "clip.npy", arr[:, :2])
    store = tmp_path / "store"
    assert c2f(["featstore", "import", "--format", "npy", "--from",
                f"coarse={tmp_path / 'coarse'}", "--from", f"fine={tmp_path / 'fine'}",
                "--out", str(store), "--backbone", "coarse=mobilenet_v2@112",
                "--gmacs", "fine=2.5"]) == 0
    s = open_store(store)
    assert s.view_attrs("coarse")["backbone"] == "mobilenet_v2"
    assert s.view_attrs("coarse")["input_size"] == 112
    assert "gmacs_per_frame" not in s.view_attrs("coarse")
    assert s.view_attrs("fine")["gmacs_per_frame"] == 2.5
    np.testing.assert_array_equal(s.read("clip", "coarse"), arr.astype(np.float16))


def _one_view_cache(tmp_path: Path) -> Path:
    (tmp_path / "fine").mkdir()
    np.save(tmp_path / "fine" / "clip.npy", np.zeros((3, 4), np.float32))
    return tmp_path / "fine"


@pytest.mark.parametrize(("flags", "says"), [
    ([], "give --backbone VIEW=NAME@SIZE"),
    (["--backbone", "fine=resnet101"], "fine=resnet101"),
    (["--backbone", "fine=resnet999@224"], "unknown backbone 'resnet999'"),
    (["--backbone", "fine=mfnet3d@16x224"], "clip backbone"),
    (["--backbone", "coarse=resnet101@224"], "no view 'coarse'"),
    (["--gmacs", "fine=lots"], "--gmacs fine=lots: not a number"),
    (["--gmacs", "fine=-1"], "must be > 0"),
    (["--backbone", "fine=resnet18@112", "--gmacs", "fine=2"], "give one"),
])
def test_cli_import_refuses_views_it_cannot_price_before_writing(tmp_path, capsys, flags, says):
    source = _one_view_cache(tmp_path)
    store = tmp_path / "store"
    assert c2f(["featstore", "import", "--format", "npy", "--from", f"fine={source}",
                "--out", str(store), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and "Traceback" not in err
    assert not store.exists()


def test_cli_import_of_a_text_file_named_npy_names_the_file(tmp_path, capsys):
    source = _one_view_cache(tmp_path)
    (source / "notes.npy").write_text("video,label\nclip,Skiing\n")
    store = tmp_path / "store"
    assert c2f(["featstore", "import", "--format", "npy", "--from", f"fine={source}",
                "--out", str(store), "--gmacs", "fine=1"]) == 2
    err = capsys.readouterr().err
    assert f"{source / 'notes.npy'}: not a NumPy .npy file" in err and "Traceback" not in err
    assert not store.exists()
    assert c2f(["-v", "featstore", "import", "--format", "npy", "--from", f"fine={source}",
                "--out", str(store), "--gmacs", "fine=1"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_import_of_a_damaged_pth_names_the_file(tmp_path, capsys):
    (tmp_path / "fine").mkdir()
    torch.save({"fea": torch.zeros(3, 4)}, tmp_path / "fine" / "a.pth")
    (tmp_path / "fine" / "b.pth").write_bytes((tmp_path / "fine" / "a.pth").read_bytes()[:50])
    assert c2f(["featstore", "import", "--format", "pth", "--from", f"fine={tmp_path / 'fine'}",
                "--out", str(tmp_path / "store"), "--gmacs", "fine=1"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'fine' / 'b.pth'}: not a readable .pth" in err
    assert not (tmp_path / "store").exists()
