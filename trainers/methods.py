"""Method names the CLI accepts -> the module implementing them (+ Config presets).

Plain data, no registry: every method module exposes `Config` and `build(cfg, info)` (see
trainers/method.py). Several names may share a module and differ only in Config defaults
(PRESETS), e.g. `lstm-cf` is the LSTM baseline fed coarse+fine features.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

METHODS: dict[str, str] = {
    "liteeval": "trainers.liteeval",
    "liteeval-rl": "trainers.liteeval",
    "arnet": "trainers.arnet",
    "random-policy": "trainers.arnet",
    "sofnet": "trainers.sofnet",
    "c2f": "trainers.c2f",
    "uniform": "trainers.baselines",
    "lstm": "trainers.baselines",
    "uniform-cf": "trainers.baselines",
    "lstm-cf": "trainers.baselines",
}

#: Config defaults that make a method name out of a shared module
PRESETS: dict[str, dict[str, Any]] = {
    "liteeval-rl": {"gate": "reinforce"},
    "random-policy": {"policy": "random"},
    "uniform": {"kind": "uniform"},
    "lstm": {"kind": "lstm"},
    "uniform-cf": {"kind": "uniform", "concat_view": "coarse"},
    "lstm-cf": {"kind": "lstm", "concat_view": "coarse"},
}


def method_module(name: str) -> ModuleType:
    """Import the module implementing method `name` (ValueError naming it when unknown)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])
