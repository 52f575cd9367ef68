"""The README's commands are what users type first: every `c2f ...` line in its code blocks
must parse with the real CLI, so flags in the README cannot drift from the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cluster.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """`c2f` command lines from the README's fenced blocks, continuation lines joined and
    trailing comments dropped; `;` separates several commands on one line."""
    blocks = re.findall(r"```\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split(";"):
                part = part.strip()
                if part.startswith("c2f "):
                    commands.append(part)
    return commands


def test_readme_shows_the_main_commands() -> None:
    names = {shlex.split(c)[1] for c in readme_commands()}
    assert {"manifest", "shards", "extract", "build", "train", "eval", "report", "sweep",
            "submit", "flops", "featstore"} <= names


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command: str) -> None:
    argv = shlex.split(command)[1:]
    if argv[0] == "submit" and "--" in argv:  # the job's own command line is parsed too
        inner = argv[argv.index("--") + 1:]
        build_parser().parse_args(inner[1:])
    args = build_parser().parse_args(argv)
    assert callable(args.handler)
