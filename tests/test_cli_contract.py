"""The CLI's own contract: a light start-up, flags shared rather than copied, no import cycles,
and bad input reported as one `error:`-style message with exit 2 and no traceback unless -v."""

from __future__ import annotations

import ast
import io
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cluster.cli import build_parser
from cluster.commands import options

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "matplotlib", "ray", "h5py", "pyarrow", "av", "nvidia.dali")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, check=False, text=True, timeout=300)


def test_command_modules_register_without_heavy_libraries():
    code = f"""
import argparse, sys
from cluster.commands import demo, features, flops, ingest, jobs
sub = argparse.ArgumentParser().add_subparsers()
for group in (demo, features, flops, ingest, jobs):
    group.register(sub)
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_choice_lists_equal_the_libraries():
    from pipeline.decode import BACKENDS
    from pipeline.encode import CODECS
    from pipeline.manifest import ACTIVITYNET_SPLITS
    from pipeline.types import SAMPLING_MODES

    assert options.SAMPLING_MODES == SAMPLING_MODES
    assert options.VIDEO_BACKENDS == BACKENDS
    assert options.VIDEO_CODECS == tuple(CODECS)
    assert options.ACTIVITYNET_SUBSETS == tuple(sorted(ACTIVITYNET_SPLITS))


def _options(parser) -> dict[str, tuple]:
    return {a.option_strings[-1]: (a.default, a.choices, a.type) for a in parser._actions
            if a.option_strings}


def _subparser(name: str):
    action = next(a for a in build_parser()._actions if a.choices and name in a.choices)
    return action.choices[name]


def test_build_takes_every_shards_and_extract_flag_with_the_same_meaning():
    build = _options(_subparser("build"))
    for other in ("shards", "extract"):
        # build's tasks run backbones: they reserve GPUs by --gpus-per-worker, and with --pool
        # its videos are decoded where those GPUs are (--video-decode), so no --gpus-per-task.
        shared = {k: v for k, v in _options(_subparser(other)).items()
                  if k not in ("--out", "--shards", "--manifest", "--gpus-per-task")}
        assert {k: build.get(k) for k in shared} == shared
    assert "--center-crop" in build and "--target-bytes" in build


def test_build_passes_center_crop_and_target_bytes_to_the_planner():
    args = build_parser().parse_args(
        ["build", "--manifest", "m.parquet", "--shards-out", "s", "--out", "o", "--view",
         "a=resnet18@64", "--frames", "8", "--center-crop", "72", "--target-bytes", "5000"])
    settings = options.shard_settings(args)
    assert settings["fmt"].center_crop == 72 and settings["target_bytes"] == 5000
    assert settings["sampling"].frames == 8 and settings["sampling"].fps is None


def test_verbose_is_accepted_after_the_command_and_before_it():
    parser = build_parser()
    assert parser.parse_args(["flops", "-v"]).verbose is True
    assert parser.parse_args(["-v", "flops"]).verbose is True
    assert parser.parse_args(["flops"]).verbose is False


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_import_cycles_among_cluster_modules():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for p in (ROOT / "cluster").rglob("*.py") if p.name != "__init__.py"}
    graph = {m: {i for i in _imports(p) if i in modules} for m, p in modules.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, set())]
    assert cycles == []


def test_a_damaged_shard_is_named_with_how_to_rebuild_it(tmp_path, capsys):
    from cluster.cli import main

    shards = tmp_path / "shards"
    shards.mkdir()
    tar_path = shards / "shard-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        data = os.urandom(40_000)
        info = tarfile.TarInfo("video1.frames.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    os.truncate(tar_path, 20_000)
    assert main(["extract", "--shards", str(shards), "--out", str(tmp_path / "store"),
                 "--view", "a=mobilenet_v2@32", "--mode", "inprocess", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"shard {tar_path} is damaged (unexpected end of data)" in err
    assert "must be rebuilt" in err and "c2f shards" in err
    assert not (tmp_path / "store" / "parts" / "shard-000000.h5").exists()


def test_log_lines_carry_no_traceback_unless_verbose():
    from cluster.cli import _BriefFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "plan 1 failed", None,
                                   sys.exc_info())
    assert _BriefFormatter("%(message)s").format(record) == "plan 1 failed"
    assert "Traceback" in logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize("verbose", [False, True])
def test_input_errors_become_one_message_and_exit_2(tmp_path, capsys, verbose):
    from cluster.cli import main

    argv = ["featstore", "import", "--format", "npy", "--from", f"v={tmp_path / 'missing'}",
            "--gmacs", "v=1", "--out", str(tmp_path / "store")]
    assert main(argv + (["-v"] if verbose else [])) == 2
    err = capsys.readouterr().err
    assert f"error: view 'v': {tmp_path / 'missing'} is not a folder" in err
    assert ("Traceback" in err) == verbose


def test_demo_runs_its_steps_through_the_entry_point_it_is_given(tmp_path):
    from cluster.cli import main
    from cluster.demo import demo_commands, run_demo

    assert build_parser().parse_args(["demo"]).run_c2f is main
    calls = []

    def c2f(argv: list[str]) -> int:
        calls.append(argv)
        return 3 if argv[0] == "extract" else 0

    assert run_demo(c2f, tmp_path, videos=2, classes=2, epochs=1) == 3
    assert calls == demo_commands(tmp_path.resolve(), 2, 2, 1)[:3]


def test_building_the_whole_parser_imports_no_heavy_library():
    """`c2f --help` and every `c2f CMD --help` stay fast only if no command module loads torch
    and friends at start-up (cluster/commands/training.py included)."""
    code = f"""
import sys
import cluster.cli
cluster.cli.build_parser()
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
