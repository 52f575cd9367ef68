"""The run's own checkpoints (RUN/checkpoints/{last,best}.pt): tensors and plain values only.

They are written atomically (featstore.atomic) and read with `torch.load(weights_only=True)`,
so loading a checkpoint cannot run code: RNG states are stored as tensors and summaries as
plain numbers, strings, lists and dicts. Every checkpoint carries `format`; one written
before this format (pickled Python objects, no `format`) is refused with a message that says
what to do instead of an unpickling error.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from featstore.atomic import atomic_path

#: version of the checkpoint layout; bump when keys change meaning
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message names the file."""


def plain(value: Any) -> Any:
    """`value` as JSON types (numpy scalars and tuples become floats, ints and lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item")
                                 else str(v)))


def save_checkpoint(path: str | os.PathLike[str], content: dict[str, Any]) -> None:
    """Atomically write `content` (+ its format) to `path`."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **content}, tmp)


def load_checkpoint(path: str | os.PathLike[str],
                    map_location: torch.device | str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (CheckpointError naming the file)."""
    path = Path(path)
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CheckpointError(
            f"checkpoint {path} is not a checkpoint this version can read safely (written by an "
            f"older version, with pickled objects, or damaged): train again into a new --out "
            f"({str(err).splitlines()[0]})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, this version reads "
                              f"format {FORMAT}: train again into a new --out")
    return content


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states to resume from, as tensors."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
