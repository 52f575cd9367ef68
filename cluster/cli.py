"""The `c2f` command: parses arguments and calls library functions.

Each command group lives in `cluster/commands/<group>.py` and exposes
`register(subparsers)`; the handler it installs returns a process exit code.
Nothing here does work of its own, so tests call the same library functions.

Start-up stays light (`c2f --help` well under a second): this module and the command modules
import heavy libraries (torch, matplotlib, ray, h5py, pyarrow, av, DALI) only inside handlers.
Bad input is reported here, once for every command: a handler raises, and `main` turns the
project's input errors into `error: ...` and exit code 2, with the traceback only under -v.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from cluster.commands import demo, features, finetune, flops, ingest, jobs, plan, training

EXIT_BAD_INPUT = 2
VERBOSE_HELP = "debug logging, and a traceback with every error"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="c2f",
        description=(
            "Coarse-to-fine recognition of long untrimmed videos: build manifests, decode "
            "videos into WebDataset shards, cache CNN features in HDF5, train gating "
            "policies, and run any of it on Ray."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    # The entry point itself, for commands that run other c2f commands (`c2f demo`): handed
    # over here so no command module imports this one (no import cycle).
    parser.set_defaults(run_c2f=main)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (ingest, flops, features, plan, training, finetune, jobs, demo):
        group.register(sub)
    _accept_verbose_everywhere(sub)
    return parser


def _accept_verbose_everywhere(sub: argparse._SubParsersAction) -> None:
    """Let -v also follow the command (`c2f train ... -v`). SUPPRESS keeps a subcommand that
    was not given -v from overwriting a -v given before the command."""
    for parser in set(sub.choices.values()):
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help=VERBOSE_HELP)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_verbose_everywhere(action)


def input_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user's input is wrong (a bad value, a missing or damaged file,
    a store that cannot be read), as opposed to a bug. The project's own input errors derive
    from ValueError (ManifestError, ShardSettingsError, CacheFileError, WeightsError, config
    errors) or are StoreError. Imported here, on the error path, to keep start-up light."""
    from featstore.schema import StoreError

    return (ValueError, OSError, StoreError)


class _BriefFormatter(logging.Formatter):
    """Log lines without the tracebacks attached to them (`log.exception`): without -v a
    user sees what failed, not where in the code."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _configure_logging(verbose: bool) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt) if verbose else _BriefFormatter(fmt))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except Exception as exc:
        if not isinstance(exc, input_error_types()):
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
