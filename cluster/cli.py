"""The `c2f` command: parses arguments and calls library functions.

Each command group lives in `cluster/commands/<group>.py` and exposes
`register(subparsers)`; the handler it installs returns a process exit code.
Nothing here does work of its own, so tests call the same library functions.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cluster.commands import demo, features, flops, ingest, jobs, plan, training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c2f",
        description=(
            "Coarse-to-fine recognition of long untrimmed videos: build manifests, decode "
            "videos into WebDataset shards, cache CNN features in HDF5, train gating "
            "policies, and run any of it on Ray."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (ingest, flops, features, plan, training, jobs, demo):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
