"""Names and constants of the on-disk format (docs/featstore.md is the contract).

Kept in one module so the writer, the reader and the validator cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA = "c2f-featstore"
SCHEMA_VERSION = 1

PARTS_DIR = "parts"
CATALOG = "catalog.parquet"
PART_SUFFIX = ".h5"

# Dataset paths inside a part file.
VIDEO_IDS = "videos/id"
VIDEO_OFFSET = "videos/offset"
VIDEO_LENGTH = "videos/length"
VIDEO_LABELS = "videos/labels"
VIDEO_SPLIT = "videos/split"
TIMESTAMPS = "timestamps"
VIEWS_GROUP = "views"
FEATURES = "features"
LOGITS = "logits"
STAGES_GROUP = "stages"

FEATURE_DTYPE = np.dtype("<f2")
TIMESTAMP_DTYPE = np.dtype("<f8")

# View attributes of imported views. A view made by a backbone the project cannot measure records
# `backbone` = UNKNOWN_BACKBONE, `input_size` = 0 and its per-frame cost in GMACs under
# GMACS_PER_FRAME (given by the user at import); trainers use that figure instead of measuring.
UNKNOWN_BACKBONE = "unknown"
GMACS_PER_FRAME = "gmacs_per_frame"

# Attribute values that are not str/int/float/bool are stored as JSON text under `<name>.json`.
JSON_SUFFIX = ".json"


class StoreError(Exception):
    """A store cannot be read or written as asked; the message names the part when one is bad."""


@dataclass(frozen=True)
class ViewSpec:
    """One feature view: which backbone at which input size produced `dim`-wide features.

    `attrs` is free-form provenance (preprocessing, weights file and sha256, ...) and is stored
    as view attributes so a part file found alone says how its features were made.
    """

    dim: int
    backbone: str
    input_size: int
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.dim) < 1:
            raise ValueError(f"view dim must be >= 1, got {self.dim}")


@dataclass(frozen=True)
class Problem:
    """One finding of `validate`: the part it concerns (None for store-wide) and what is wrong."""

    part: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.part}: {self.message}" if self.part else self.message


def write_attrs(obj: Any, attrs: dict[str, Any]) -> None:
    """Store a dict as HDF5 attributes: plain scalars natively, anything else as JSON text."""
    for key, value in attrs.items():
        if key.endswith(JSON_SUFFIX):
            raise ValueError(f"attribute names may not end with {JSON_SUFFIX!r}: {key!r}")
        if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
            obj.attrs[key] = value
        else:
            obj.attrs[key + JSON_SUFFIX] = json.dumps(value, sort_keys=True, default=str)


def read_attrs(obj: Any) -> dict[str, Any]:
    """Inverse of `write_attrs`: decode JSON attributes, return numpy scalars as Python ones."""
    out: dict[str, Any] = {}
    for key, value in obj.attrs.items():
        if key.endswith(JSON_SUFFIX):
            out[key[: -len(JSON_SUFFIX)]] = json.loads(_as_str(value))
        elif isinstance(value, bytes):
            out[key] = value.decode("utf-8")
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
