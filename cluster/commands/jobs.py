"""`c2f submit`: run any c2f command as a Ray job on a cluster and follow its logs."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add `submit` to the top-level parser."""
    p = sub.add_parser(
        "submit",
        help="run a c2f command on a Ray cluster as a job and follow its logs",
        description="Submit COMMAND (everything after `--`) to the Ray job server at --address, "
        "print the job id, then stream the job's logs until it ends. The command runs on the "
        "head node, where c2f must be installed; give data commands `--mode cluster` so their "
        "work spreads over the cluster. Exit code: the job's (0 when it succeeded).",
        epilog="example: c2f submit --address http://HEAD:8265 -- c2f shards --manifest "
        "/data/m.parquet --out /data/shards --mode cluster",
    )
    p.add_argument("--address", required=True,
                   help="Ray job server (dashboard) address, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", help="local folder uploaded as the job's working folder")
    p.add_argument("--no-follow", action="store_true",
                   help="print the job id and return at once instead of following the logs")
    p.add_argument("--job-id", help="submission id to use instead of a generated one")
    p.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the command to run, e.g. `-- c2f shards ...`")
    p.set_defaults(handler=_submit)


def _submit(args: argparse.Namespace) -> int:
    from cluster.submit import follow_job, submit_command

    command = list(args.job_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("c2f submit: give the command to run after `--`", file=sys.stderr)
        return 2
    job_id = submit_command(args.address, command, working_dir=args.working_dir,
                            job_id=args.job_id)
    print(f"submitted job {job_id}", flush=True)
    if args.no_follow:
        return 0
    outcome = follow_job(args.address, job_id, lambda text: print(text, end="", flush=True))
    print(f"job {job_id} {outcome.status} (exit code {outcome.exit_code})", flush=True)
    return outcome.process_exit_code
