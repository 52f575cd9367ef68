"""Start-up time of the `c2f` command: `c2f --help` and `c2f CMD --help` for every command.

Each one runs in a fresh Python subprocess (`python -m cluster.cli ... --help`, the code path
of the installed `c2f` script), `--repeats` times, interleaved so machine load hits all alike;
the table shows the median and the worst wall time, the peak memory of the child (ru_maxrss,
as measured by the kernel for the finished child) and which heavy libraries the command
module loaded just to print its help (checked in one more fresh process). A bare
`python -c pass` is timed alongside as the floor. With --baseline DIR, the same commands run
from another checkout too, interleaved, for a side-by-side speed-up.
Usage:
    python benchmarks/bench_cli.py [--repeats 5] [--limit 1.0] [--baseline /path/to/checkout]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "matplotlib", "ray", "h5py", "pyarrow", "av", "nvidia.dali")
PROBE = """
import contextlib, io, sys
from cluster.cli import build_parser
with contextlib.redirect_stdout(io.StringIO()):
    try:
        build_parser().parse_args(sys.argv[1:])
    except SystemExit:
        pass
print(",".join(m for m in {heavy!r} if m in sys.modules) or "-")
"""


def commands() -> list[list[str]]:
    """[] for `c2f --help`, then every command and every nested sub-command, and
    `c2f train liteeval`."""
    import argparse as ap

    from cluster.cli import build_parser

    out: list[list[str]] = [[]]

    def walk(parser: ap.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, ap._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append(prefix + [name])
                    walk(sub, prefix + [name])

    walk(build_parser(), [])
    if ["train"] in out:  # a method's own help (its config keys), as a user asks for it
        out.insert(out.index(["train"]) + 1, ["train", "liteeval"])
    return out


def run_timed(root: Path, argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the kernel's accounting of the finished child) of one
    fresh `python -m cluster.cli ARGV --help` with the checkout `root` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.perf_counter()
    # cwd=root: `python -m` puts the working folder first on sys.path
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *argv, "--help"], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return float("nan"), float("nan")  # a command this checkout does not have
    return wall, usage.ru_maxrss / 1024


def heavy_modules(root: Path, argv: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(root)}
    probe = PROBE.format(heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", probe, *argv, "--help"], cwd=root, env=env,
                          check=True, capture_output=True, text=True).stdout.strip()


def floor_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (%(default)s)")
    parser.add_argument("--limit", type=float, default=1.0,
                        help="seconds a --help may take; rows over it are marked (%(default)s)")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout (e.g. an older commit) timed side by side, "
                        "interleaved with this one")
    args = parser.parse_args()
    roots = [ROOT] + ([args.baseline.resolve()] if args.baseline else [])
    argvs = commands()
    walls = {(r, i): [] for r in roots for i in range(len(argvs))}
    rss = {(r, i): [] for r in roots for i in range(len(argvs))}
    floor: list[float] = []
    for _ in range(args.repeats):
        floor.append(floor_seconds())
        for i, argv in enumerate(argvs):
            for root in roots:
                wall, peak = run_timed(root, argv)
                walls[root, i].append(wall)
                rss[root, i].append(peak)
    print(f"python -c pass: median {statistics.median(floor):.3f} s over {args.repeats} runs; "
          f"load average {os.getloadavg()[0]:.1f}; {resource.getpagesize()} B pages")
    head = "| command | median s | max s | peak RSS MB | heavy modules loaded |"
    rule = "|---|---:|---:|---:|---|"
    if args.baseline:
        head += " baseline median s | baseline RSS MB | baseline heavy modules | speed-up |"
        rule += "---:|---:|---|---:|"
    print(head + f" under {args.limit} s |")
    print(rule + "---|")
    over = 0
    for i, argv in enumerate(argvs):
        med = statistics.median(walls[ROOT, i])
        ok = med < args.limit
        over += not ok
        row = (f"| `{' '.join(['c2f', *argv, '--help'])}` | {med:.3f} | "
               f"{max(walls[ROOT, i]):.3f} | {statistics.median(rss[ROOT, i]):.0f} | "
               f"{heavy_modules(ROOT, argv)} |")
        if args.baseline:
            base = statistics.median(walls[roots[1], i])
            heavy = "n/a" if math.isnan(base) else heavy_modules(roots[1], argv)
            row += (f" {base:.3f} | {statistics.median(rss[roots[1], i]):.0f} | {heavy} | "
                    f"{base / med:.1f}x |")
        print(row + f" {'yes' if ok else '**no**'} |")
    print(f"{len(argvs) - over} of {len(argvs)} commands under {args.limit} s (median of "
          f"{args.repeats})")


if __name__ == "__main__":
    main()
