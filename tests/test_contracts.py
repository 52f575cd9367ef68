"""The contracts between the training loop, the methods, the CLI and the run directory: every
method described once (trainers/methods.py) and listed by its --help, one evaluation iterator,
checkpoints read with weights_only=True, run files named in one module, no import cycles, and
bad paths ending in one message and exit 2."""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones.flops import model_cost
from cluster.cli import main
from trainers import rundir
from trainers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainers.config import resolve_config
from trainers.config_help import config_keys
from trainers.cost import module_gmacs
from trainers.evaluation import evaluating
from trainers.method import Batch
from trainers.methods import EVALUATIONS, METHODS, load_ref

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featstore", "backbones", "pipeline", "trainers", "cluster")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_spec_resolves_to_what_the_loop_calls(name):
    spec = METHODS[name]
    config = spec.config_type()
    assert dataclasses.is_dataclass(config) and callable(config.validate)
    assert set(spec.presets) <= {f.name for f in dataclasses.fields(config)}
    assert callable(load_ref(spec.builder))
    stages = spec.stages()
    assert all(isinstance(s, str) and f > 0 for s, f in stages)
    if spec.after_training:
        assert callable(load_ref(spec.after_training))
    for evaluation in spec.evaluations:
        assert EVALUATIONS[evaluation.name] is evaluation
        assert callable(load_ref(evaluation.function))
    assert pickle.loads(pickle.dumps(spec)) == spec  # plain data: it can travel to Ray workers


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_help_lists_every_config_key_with_type_default_and_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    keys = config_keys(METHODS[name].config_type(), METHODS[name].presets)
    for key in keys:
        assert f"  {key.name} ({key.type}, default {key.default!r})" in out
        assert key.help, f"{name}.{key.name} has no entry in its Config docstring"
    preset = next(iter(METHODS[name].presets.items()), None)
    if preset:  # defaults shown are those of this name, presets applied
        assert f"  {preset[0]} (" in out and f"default {preset[1]!r})" in out


def test_train_help_and_the_docs_name_every_method(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    docs = (ROOT / "docs" / "trainers.md").read_text()
    for name, spec in METHODS.items():
        assert f"  {name}" in out and spec.summary in out
        assert f"`{name}`" in docs, f"docs/trainers.md does not describe {name}"


def test_help_of_the_training_commands_does_not_import_torch():
    code = ("import sys; from cluster.commands import training as t; "
            "[t.method_help(m) for m in t.METHODS]; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


class _Probe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)


def _batch() -> Batch:
    return Batch({"v": torch.zeros(1, 3, 2)}, torch.tensor([3]), torch.ones(1, 3, dtype=bool),
                 torch.zeros(1, 2), ["a"], {"v": {"s": torch.zeros(1, 3, 4)}})


def test_evaluating_sets_eval_mode_without_grad_and_restores_even_after_a_break():
    model = _Probe().train()
    with evaluating(model, [_batch(), _batch()]) as batches:
        for batch in batches:
            assert not model.training and not torch.is_grad_enabled()
            assert batch.features["v"].device == model.linear.weight.device
            break
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError), evaluating(model, [_batch()]):
        raise RuntimeError("boom")
    assert model.training


def test_batch_to_moves_every_tensor_and_keeps_the_ids():
    moved = _batch().to("meta")
    tensors = [moved.features["v"], moved.lengths, moved.mask, moved.targets,
               moved.stages["v"]["s"]]
    assert all(t.device.type == "meta" for t in tensors) and moved.video_ids == ["a"]


def test_batch_to_casts_stored_float16_to_float32_also_on_the_same_device():
    half = _batch()
    half.features["v"], half.stages["v"]["s"] = (half.features["v"].half(),
                                                 half.stages["v"]["s"].half())
    moved = half.to("cpu")
    assert moved.features["v"].dtype == moved.stages["v"]["s"].dtype == torch.float32
    assert moved.lengths.dtype == torch.int64 and moved.mask.dtype == torch.bool
    assert moved.to("cpu") is moved


def test_checkpoints_round_trip_with_weights_only_and_refuse_the_old_format(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "rng": {"cpu": torch.get_rng_state()},
                           "best_map": float("-inf"), "config": {"lr": 0.1, "views": ["a"]}})
    content = load_checkpoint(path)
    assert torch.equal(content["model"]["w"], torch.ones(2)) and content["config"]["lr"] == 0.1
    old = tmp_path / "old.pt"
    torch.save({"model": {}, "run": Path("somewhere")}, old)  # a pickled Python object
    with pytest.raises(CheckpointError, match=r"old\.pt.*train again"):
        load_checkpoint(old)
    unversioned = tmp_path / "unversioned.pt"
    torch.save({"model": {}}, unversioned)
    with pytest.raises(CheckpointError, match="unversioned.pt has format None"):
        load_checkpoint(unversioned)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="torn.pt"):
        load_checkpoint(torn)


def _project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere (top level or inside functions)."""
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                            else node.module for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_cycles_and_packages_import_only_downwards():
    graph = _imports(_project_modules())
    assert _cycles(graph) == []
    rank = {p: i for i, p in enumerate(PACKAGES)}
    upward = [(m, d) for m, deps in graph.items() for d in deps
              if rank[d.split(".")[0]] > rank[m.split(".")[0]]]
    assert upward == []


def test_run_file_names_live_only_in_rundir():
    names = [rundir.CONFIG, rundir.EVAL, rundir.PREDICTIONS, rundir.METRICS, rundir.ONLINE,
             rundir.BUDGET, rundir.SWEEP_TABLE, rundir.ACCURACY_FIGURE, "best.pt", "last.pt"]
    offenders = []
    for path in [*(ROOT / "trainers").glob("*.py"), ROOT / "cluster/commands/training.py"]:
        if path.name == "rundir.py":
            continue
        literals = {n.value for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        offenders += [(path.name, n) for n in names if n in literals]
    assert offenders == []


def test_finished_files_are_written_only_through_featstore_atomic():
    paths = [*(ROOT / "trainers").rglob("*.py"), ROOT / "backbones/flops.py",
             ROOT / "cluster/commands/training.py"]
    offenders = [p.name for p in paths
                 if any(s in p.read_text() for s in ("os.replace(", "os.rename(", "mkstemp("))]
    assert offenders == []


def test_bad_paths_give_one_message_naming_them_and_exit_2(tmp_path, capsys):
    missing, a_file = tmp_path / "nonexistent", tmp_path / "a_file"
    a_file.write_text("not a run")
    for bad, argv in (
        (missing, ["train", "uniform", "--store", str(missing), "--out", str(tmp_path / "r")]),
        (missing, ["eval", str(missing)]), (missing, ["report", str(missing)]),
        (a_file, ["eval", str(a_file)]), (a_file, ["report", str(a_file)]),
        (missing, ["sweep", "uniform", "--store", str(missing), "--out", str(tmp_path / "s"),
                   "--knob", "frames=1,2"]),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
        assert err.count("\n") == 1
    # a run directory whose checkpoint has the old, pickled format (refused before the store
    # is opened)
    cfg = resolve_config("uniform", store=str(tmp_path / "store"), out=str(tmp_path / "old"))
    run = rundir.RunDir(cfg.out)
    run.checkpoints.mkdir(parents=True)
    run.config.write_text(json.dumps(cfg.to_dict()))
    torch.save({"model": {}, "path": Path("x")}, run.checkpoint(rundir.BEST))
    assert main(["eval", str(run.root)]) == 2
    err = capsys.readouterr().err
    assert str(run.checkpoint(rundir.BEST)) in err and "train again" in err


def test_backbones_and_trainers_count_an_lstm_with_the_same_counter():
    lstm = torch.nn.LSTM(8, 4, batch_first=True)
    expected = 4 * 4 * (8 + 4) * 1e-9  # 4 gates x hidden x (input + hidden) multiply-adds
    backbone_count, params = model_cost(lstm, (1, 1, 8))
    assert backbone_count == pytest.approx(expected) == module_gmacs(lstm, torch.zeros(1, 1, 8))
    assert params == sum(p.numel() for p in lstm.parameters())
    assert torch.backends.mkldnn.enabled  # the fused kernels are back on after counting
