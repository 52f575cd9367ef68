"""Report figures from real finished runs on a generated synthetic store."""

import json

import pytest

from trainers.config import resolve_config
from trainers.report import load_result, make_report, pick_videos, summary_table
from trainers.synthetic import make_synthetic_store
from trainers.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    store = make_synthetic_store(root / "store", videos=32, frames=(8, 12), seed=2)
    out = []
    for name, sets in (("a", ["frames=4"]), ("b", [])):
        cfg = resolve_config("uniform", store=str(store), out=str(root / name), epochs=1,
                             batch_size=16, sets=sets)
        out.append(train(cfg))
    return out


def test_report_writes_readable_pngs_and_a_table(runs, tmp_path):
    paths = make_report(runs[0], [runs[1]], tmp_path / "rep")
    names = {p.name for p in paths}
    assert {"accuracy_vs_gflops.png", "fine_usage_per_class.png", "decision_strips.png",
            "summary.md"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    table = (tmp_path / "rep" / "summary.md").read_text()
    assert table.count("| uniform |") == 2


def test_online_and_budget_figures_appear_when_eval_wrote_them(runs, tmp_path):
    run = runs[1]
    rows = [{"method": m, "K": k, "mAP": 0.5, "top1": 0.4 + 0.1 * k, "gflops": 10.0 * k,
             "fine_frames": k} for m in ("LiteEval", "Uniform-K") for k in (1, 2)]
    (run / "online.json").write_text(json.dumps(rows))
    budget = {"cost": [1.0, 3.0, 2.0], "running_mean_cost": [1.0, 2.0, 2.0],
              "budget": [2.0, 2.0, 2.0], "top1": 0.5, "mean_cost": 2.0}
    (run / "budget.json").write_text(json.dumps(budget))
    try:
        names = {p.name for p in make_report(run, out=tmp_path / "r2")}
    finally:
        (run / "online.json").unlink()
        (run / "budget.json").unlink()
    assert {"online_curve.png", "budget.png"} <= names


def test_summary_rows_carry_measured_figures(runs):
    result = load_result(runs[1])
    row = summary_table([result]).splitlines()[2]
    assert f"{result.summary['gflops_mean']:.2f}" in row


def test_decision_strip_videos_cover_classes(runs):
    records = load_result(runs[0]).records
    picked = pick_videos(records, 4)
    assert len({r["labels"][0] for r in picked}) == 4


def test_unfinished_run_is_refused_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.json"):
        load_result(tmp_path)
