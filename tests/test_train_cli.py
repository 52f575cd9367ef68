"""`c2f synthetic | train | eval | report | sweep` end to end through cluster.cli.main, on a tiny
generated store (trainers.synthetic)."""

import csv
import json

import pytest

from cluster.cli import build_parser, main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "store"
    assert main(["synthetic", str(path), "--videos", "40", "--min-frames", "10",
                 "--max-frames", "14", "--seed", "5"]) == 0
    return path


def test_train_eval_report_end_to_end(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "uniform-cf", "--store", str(store), "--out", str(run),
                 "--epochs", "2", "--batch-size", "8", "--set", "lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "GFLOPs/video" in out
    config = json.loads((run / "config.json").read_text())
    assert config["method_config"]["concat_view"] == "coarse" and config["lr"] == 0.01
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads((run / "evals" / "test-best.json").read_text())
    assert evaluated["mAP"] == pytest.approx(json.loads((run / "eval.json").read_text())["mAP"])
    assert main(["report", str(run)]) == 0
    for name in ("accuracy_vs_gflops.png", "fine_usage_per_class.png", "decision_strips.png"):
        assert (run / "report" / name).stat().st_size > 1000
    assert "uniform-cf" in (run / "report" / "summary.md").read_text()


def test_eval_with_a_budget_the_method_lacks_is_a_clear_error(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "uniform", "--store", str(store), "--out", str(run),
                 "--epochs", "1"]) == 0
    assert main(["eval", str(run), "--online-budget", "1", "2"]) == 2
    assert "no online evaluation" in capsys.readouterr().err


def test_online_budget_without_the_baseline_head_is_a_clear_error(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "liteeval", "--store", str(store), "--out", str(run), "--epochs", "1",
                 "--set", "baseline_head=false", "--set", "fine_hidden=16",
                 "--set", "coarse_hidden=8"]) == 0
    assert main(["eval", str(run), "--online-budget", "1", "2"]) == 2
    assert "baseline_head=True" in capsys.readouterr().err
    assert not (run / "online.json").exists()


def test_bad_override_exits_2_naming_the_key(store, tmp_path, capsys):
    code = main(["train", "uniform", "--store", str(store), "--out", str(tmp_path / "r"),
                 "--set", "gama=0.1"])
    assert code == 2
    assert "'gama'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_sweep_writes_csv_and_curve_and_skips_finished_runs(store, tmp_path, capsys):
    args = ["sweep", "uniform", "--store", str(store), "--out", str(tmp_path / "sw"),
            "--knob", "frames=2,6", "--epochs", "1", "--batch-size", "16"]
    assert main(args) == 0
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert [r["frames"] for r in rows] == ["2", "6"]
    assert float(rows[0]["gflops_mean"]) < float(rows[1]["gflops_mean"])
    assert (tmp_path / "sw" / "curve.png").stat().st_size > 1000
    stamp = (tmp_path / "sw" / "frames=2" / "eval.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "sw" / "frames=2" / "eval.json").stat().st_mtime_ns == stamp


def test_help_texts_are_real():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "eval", "report", "sweep", "synthetic"):
        text = sub.choices[name].format_help()
        assert len(text) > 400 and "usage: c2f " + name in text
