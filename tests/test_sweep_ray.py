"""`c2f sweep --mode local`: the points train as Ray tasks and the sweep equals a sequential
one (same sweep.csv, same per-point results), on a tiny generated store."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main


@pytest.mark.slow
def test_sweep_on_ray_equals_sequential(ray_local, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["synthetic", str(store), "--videos", "24", "--min-frames", "6",
                 "--max-frames", "8", "--seed", "3"]) == 0
    common = ["sweep", "uniform", "--store", str(store), "--knob", "frames=2,4",
              "--epochs", "1", "--batch-size", "8"]
    assert main([*common, "--out", str(tmp_path / "seq")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--mode", "local",
                 "--gpus-per-trial", "0"]) == 0
    capsys.readouterr()
    seq, ray = tmp_path / "seq", tmp_path / "ray"
    assert (ray / "sweep.csv").read_text() == (seq / "sweep.csv").read_text()
    for point in ("frames=2", "frames=4"):
        a = json.loads((seq / point / "eval.json").read_text())
        b = json.loads((ray / point / "eval.json").read_text())
        assert a == b
