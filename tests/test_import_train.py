"""A feature cache made elsewhere trains: import a `.npy` cache (views named by backbone) and a
LiteEval-layout `.pth` cache (views priced by --gmacs), then train LiteEval and Uniform on each
through the CLI, as a user would. The caches are generated here with some class signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones.flops import view_cost
from cluster.cli import main as c2f

CLASSES = ["Skiing", "Surfing"]
SPLITS = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
DIMS = {"coarse": 8, "fine": 12}


def write_cache(root: Path, fmt: str) -> Path:
    """root/<view>/<video>.<fmt> for 2 views and 24 videos, and root/labels.csv."""
    rng = np.random.default_rng(0)
    rows = ["video_id,labels,split"]
    for view in DIMS:
        (root / view).mkdir(parents=True)
    for i in range(2 * len(SPLITS)):
        label, split, vid = i % 2, SPLITS[i // 2], f"video{i:02d}"
        rows.append(f"{vid},{CLASSES[label]},{split}")
        frames = int(rng.integers(5, 9))
        for view, dim in DIMS.items():
            feats = rng.standard_normal((frames, dim)).astype(np.float32)
            feats[:, label] += 2.0
            if fmt == "npy":
                np.save(root / view / f"{vid}.npy", feats)
            else:
                torch.save({"fea": torch.from_numpy(feats)}, root / view / f"{vid}.pth")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def import_cache(root: Path, fmt: str, pricing: list[str]) -> Path:
    store = root / "store"
    assert c2f(["featstore", "import", "--format", fmt, "--from", f"coarse={root / 'coarse'}",
                "--from", f"fine={root / 'fine'}", "--manifest", str(root / "labels.csv"),
                "--out", str(store), *pricing]) == 0
    return store


def train(store: Path, method: str, out: Path, *settings: str) -> dict:
    assert c2f(["train", method, "--store", str(store), "--out", str(out), "--epochs", "2",
                "--batch-size", "4", *[x for s in settings for x in ("--set", s)]]) == 0
    return json.loads((out / "eval.json").read_text())


LITEEVAL = ("coarse_hidden=8", "fine_hidden=16")


def test_npy_cache_named_by_backbone_trains(tmp_path: Path):
    store = import_cache(write_cache(tmp_path, "npy"), "npy",
                         ["--backbone", "coarse=mobilenet_v2@112",
                          "--backbone", "fine=resnet18@112"])
    coarse, fine = view_cost("mobilenet_v2", 112).gmacs, view_cost("resnet18", 112).gmacs
    uniform = train(store, "uniform", tmp_path / "uniform", "view=fine")
    assert uniform["videos"] == 4
    assert uniform["gflops_per_frame_mean"] == pytest.approx(fine, rel=1e-3)
    lite = train(store, "liteeval", tmp_path / "liteeval", *LITEEVAL)
    assert coarse <= lite["gflops_per_frame_mean"] <= 1.01 * (coarse + fine)


def test_liteeval_pth_cache_priced_by_gmacs_trains(tmp_path: Path):
    store = import_cache(write_cache(tmp_path, "pth"), "pth",
                         ["--gmacs", "coarse=0.25", "--gmacs", "fine=4.0"])
    uniform = train(store, "uniform", tmp_path / "uniform", "view=fine")
    assert uniform["gflops_per_frame_mean"] == pytest.approx(4.0, rel=1e-3)
    lite = train(store, "liteeval", tmp_path / "liteeval", *LITEEVAL)
    assert lite["videos"] == 4
    assert 0.25 <= lite["gflops_per_frame_mean"] <= 1.01 * (0.25 + 4.0)
    assert 0.0 <= lite["fine_usage_mean"] <= 1.0


def test_a_store_imported_before_views_were_priced_says_how_to_fix_it(tmp_path, capsys):
    from featstore import StoreWriter, ViewSpec, build_catalog

    store = tmp_path / "store"
    with StoreWriter(store, "import-000000", {"fine": ViewSpec(4, "unknown", 0)}) as w:
        for i, split in enumerate(("train", "val", "test")):
            w.add_video(f"v{i}", ["Skiing"], split, np.arange(3.0),
                        {"fine": np.ones((3, 4), np.float32)})
    build_catalog(store)
    assert c2f(["train", "uniform", "--store", str(store), "--out", str(tmp_path / "run"),
                "--epochs", "1"]) == 2
    assert "re-import it with --backbone fine=NAME@SIZE or --gmacs fine=X" in capsys.readouterr().err
