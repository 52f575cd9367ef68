"""Submit a `c2f` command to a Ray cluster as a Ray job and follow it to the end.

A job runs its entrypoint as a driver on the head node, with RAY_ADDRESS pointing at the
cluster, so a submitted `c2f shards ... --mode cluster` spreads its plans over every node. We
use Ray's job server (JobSubmissionClient, the dashboard's HTTP address, port 8265 by default)
rather than `ray.init("ray://...")` because a job keeps running, and keeps its logs, when the
submitting laptop disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


def auth_headers() -> dict[str, str]:
    """The Authorization header for a token-protected job server, following Ray's own rule for
    `ray start`: unless RAY_AUTH_MODE says otherwise, use the token when one exists
    (RAY_AUTH_TOKEN, else the file at RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token).
    Ray's client sends it only when RAY_AUTH_MODE=token, so without this a default `ray start`
    head on the same machine refuses our requests."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers())


@dataclass
class JobOutcome:
    """How a followed job ended: its id, final status and the driver's exit code (None when Ray
    does not know it, e.g. the job was stopped before its driver started)."""

    job_id: str
    status: str
    exit_code: int | None

    @property
    def process_exit_code(self) -> int:
        """What `c2f submit` exits with: the driver's code, else 0 on success and 1 otherwise."""
        if self.exit_code is not None:
            return self.exit_code
        return 0 if self.status == "SUCCEEDED" else 1


def submit_command(
    address: str,
    command: Sequence[str],
    *,
    working_dir: str | None = None,
    env: dict[str, str] | None = None,
    job_id: str | None = None,
) -> str:
    """Submit `command` (argv list, e.g. ["c2f", "shards", ...]) and return the job id.

    `working_dir` is uploaded and becomes the job's current folder; `env` adds environment
    variables to the job.
    """
    if not command:
        raise ValueError("no command to submit")
    runtime_env: dict = {}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    if env:
        runtime_env["env_vars"] = dict(env)
    client = _client(address)
    job = client.submit_job(
        entrypoint=shlex.join(command), runtime_env=runtime_env or None, submission_id=job_id
    )
    log.info("submitted job %s to %s: %s", job, address, shlex.join(command))
    return job


def follow_job(address: str, job_id: str, write: Callable[[str], None]) -> JobOutcome:
    """Stream the job's logs through `write` until it ends; return how it ended."""
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    exit_code = getattr(info, "driver_exit_code", None)
    log.info("job %s ended: %s (exit code %s)", job_id, status, exit_code)
    return JobOutcome(job_id=job_id, status=status, exit_code=exit_code)
