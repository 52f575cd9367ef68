"""One typed configuration per run: loop settings + the method's own Config.

Sources, later ones win: dataclass defaults (with the method spec's presets) -> a JSON or TOML
file (`--config FILE`) -> explicit command-line flags (`--epochs 5`) -> `--set KEY=VALUE`.

File layout (JSON shown; TOML uses a `[method_config]` table):

    {"method": "liteeval", "store": "stores/fcvid", "epochs": 20,
     "method_config": {"gamma": 0.1, "fine_hidden": 512}}

`--set` keys: a RunConfig field (`--set lr=1e-4`), a field of the method's Config by its bare
name (`--set gamma=0.1`) or dotted (`--set method_config.gamma=0.1`, needed only when the
name is also a RunConfig field). Values are parsed by the field's type: numbers, `true/false`,
`none`, lists as `a,b,c` or JSON. A value of the wrong type or an unknown key is refused with
an error naming it. The resolved config is written to RUN/config.json and a re-run compares
against it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from featstore import storage
from trainers.methods import method_spec
from trainers.schedule import OPTIMIZERS, SCHEDULES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML config files need 3.11's tomllib
    tomllib = None


@dataclass
class RunConfig:
    """Loop settings (the method's hyperparameters live in `method_config`).

    method: a name from trainers.methods.METHODS. store: feature store directory.
    out: run directory. epochs, batch_size, lr, weight_decay: training (defaults per method:
    its spec's run_defaults, trainers/methods.py). seed: seeds data order and model init.
    device: torch device. val_split: evaluated every epoch (best.pt is chosen on it); a store
    without it gets one carved from train, `val_fraction` of each class (trainers/splits.py).
    eval_split: evaluated at the end (eval.json). log_every: steps between progress log lines.
    cache: keep features in memory after the first epoch: on, off, or auto (when they fit in
    cache_gb GB; None: half of the available memory; see trainers/cache_policy.py). threads:
    torch threads (None: the CPUs this process may use, trainers/threads.py).
    optimizer, schedule, warmup_epochs, milestones, lr_gamma: see trainers/schedule.py
    (milestones are fractions of the run). grad_clip: max gradient L2 norm (0 = off).
    normalize: standardise features with training-split statistics (trainers/normalize.py).
    """

    method: str = ""
    store: str = ""
    out: str = ""
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    val_split: str = "val"
    eval_split: str = "test"
    log_every: int = 20
    cache: Literal["auto", "on", "off"] = "auto"
    cache_gb: float | None = None
    threads: int | None = None
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: float = 0.1
    grad_clip: float = 5.0
    normalize: bool = True
    val_fraction: float = 0.1
    method_config: Any = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (method_config as a dict)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method_config"] = dataclasses.asdict(self.method_config)
        return json.loads(json.dumps(d))


#: what a config.json without these keys (written before they existed) trained with
LEGACY_RUN_VALUES: dict[str, Any] = {"optimizer": "adam", "schedule": "constant",
                                     "warmup_epochs": 0.0, "grad_clip": 0.0, "normalize": False}

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"method_config"}
# How a run is executed, not which run it is: a resumed run may change them.
EXECUTION_KEYS = ("cache", "cache_gb", "threads")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, key: str, from_text: bool = False) -> Any:
    """`value` as type `tp`, parsing text when `from_text`; ValueError naming `key` otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ValueError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return json.loads(value) if from_text and _is_json(value) else value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (from_text and value.lower() in
                                                      ("none", "null"))):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(value, arg, key, from_text)
            except ValueError:
                continue
        raise bad
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (from_text and str(choice) == value):
                return choice
        raise ValueError(f"config key {key!r}: expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple, abc.Sequence):
        if from_text:
            value = json.loads(value) if value.strip().startswith("[") else [
                v.strip() for v in value.split(",") if v.strip()]
            inner_text = all(isinstance(v, str) for v in value)
        else:
            inner_text = False
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise bad
            return tuple(convert(v, a, key, inner_text) for v, a in zip(value, args))
        inner = args[0] if args else Any
        items = [convert(v, inner, key, inner_text) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        value = json.loads(value) if from_text else value
        if not isinstance(value, dict):
            raise bad
        return value
    if tp is bool:
        if from_text:
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise bad
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if from_text:
            try:
                return int(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if from_text:
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ValueError(f"config key {key!r}: unsupported field type {_type_name(tp)}")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, TypeError):
        return False
    return True


def _set_fields(obj: Any, values: dict[str, Any], prefix: str, from_text: bool) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)} - {"method_config"}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown config key {prefix + key!r} (known: {sorted(names)})")
        setattr(obj, key, convert(value, hints[key], prefix + key, from_text))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON (.json) or TOML (.toml) config file as a dict."""
    path = Path(path)
    if path.suffix == ".toml":
        if tomllib is None:
            raise ValueError(f"config file {path}: TOML needs Python >= 3.11, use JSON")
        with path.open("rb") as f:
            return tomllib.load(f)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    raise ValueError(f"config file {path} must end in .json or .toml")


def parse_sets(sets: list[str]) -> list[tuple[str, str]]:
    """'KEY=VALUE' strings -> pairs (ValueError naming a malformed one)."""
    pairs = []
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def resolve_config(
    method: str | None = None,
    file: str | os.PathLike | None = None,
    sets: list[str] | None = None,
    **flags: Any,
) -> RunConfig:
    """Build a RunConfig from defaults, a file, flags (None = not given) and --set pairs."""
    data = read_config_file(file) if file else {}
    method = method or data.get("method")
    if not method:
        raise ValueError("no method given (positional METHOD or 'method' in the config file)")
    if data.get("method") not in (None, method):
        raise ValueError(f"config file says method {data['method']!r} but {method!r} was given")
    spec = method_spec(method)
    cfg = RunConfig(method=method, method_config=spec.default_config())
    _set_fields(cfg, dict(spec.run_defaults), "", from_text=False)
    file_method = data.pop("method_config", {}) or {}
    data.pop("method", None)
    _set_fields(cfg, data, "", from_text=False)
    _set_fields(cfg.method_config, file_method, "method_config.", from_text=False)
    _set_fields(cfg, {k: v for k, v in flags.items() if v is not None}, "", from_text=False)
    method_names = {f.name for f in dataclasses.fields(cfg.method_config)}
    for key, value in parse_sets(sets or []):
        if key.startswith("method_config."):
            _set_fields(cfg.method_config, {key.split(".", 1)[1]: value}, "method_config.", True)
        elif key in RUN_FIELDS and key != "method":
            _set_fields(cfg, {key: value}, "", True)
        elif key in method_names:
            _set_fields(cfg.method_config, {key: value}, "method_config.", True)
        else:
            raise ValueError(
                f"unknown config key {key!r} (run keys: {sorted(RUN_FIELDS - {'method'})}; "
                f"{method} keys: {sorted(method_names)})"
            )
    if not cfg.store:
        raise ValueError("no store given (--store or 'store' in the config file)")
    if not cfg.out:
        raise ValueError("no output run directory given (--out or 'out' in the config file)")
    cfg.store = storage.absolute(cfg.store)  # URLs (s3://…) stay as given
    cfg.out = str(Path(cfg.out).resolve())
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"config key {key!r} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ValueError(f"config key 'lr' must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ValueError(f"config key 'weight_decay' must be >= 0, got {cfg.weight_decay}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"config key 'threads' must be >= 1, got {cfg.threads}")
    if cfg.cache_gb is not None and cfg.cache_gb < 0:
        raise ValueError(f"config key 'cache_gb' must be >= 0, got {cfg.cache_gb}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"config key 'optimizer' must be one of {OPTIMIZERS}, got "
                         f"{cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"config key 'schedule' must be one of {SCHEDULES}, got "
                         f"{cfg.schedule!r}")
    if cfg.warmup_epochs < 0 or cfg.grad_clip < 0:
        raise ValueError("config keys 'warmup_epochs' and 'grad_clip' must be >= 0, got "
                         f"{cfg.warmup_epochs} and {cfg.grad_clip}")
    if any(not 0.0 < m < 1.0 for m in cfg.milestones):
        raise ValueError(f"config key 'milestones' must be fractions in (0, 1), got "
                         f"{cfg.milestones}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"config key 'val_fraction' must be in (0, 1), got {cfg.val_fraction}")


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """A RunConfig read back from RUN/config.json (same type checks)."""
    d = dict(d)
    config_type = method_spec(d["method"]).config_type()
    cfg = RunConfig(method=d.pop("method"), method_config=config_type())
    # a run written before these keys existed trained without them
    d = {**{k: v for k, v in LEGACY_RUN_VALUES.items() if k not in d}, **d}
    method_values = d.pop("method_config", {}) or {}
    # likewise for a method's keys: its Config's LEGACY_VALUES (what runs without them used)
    method_values = {**getattr(config_type, "LEGACY_VALUES", {}), **method_values}
    if isinstance(d.get("cache"), bool):  # runs written before cache became auto|on|off
        d["cache"] = "on" if d["cache"] else "off"
    _set_fields(cfg, d, "", from_text=False)
    _set_fields(cfg.method_config, method_values, "method_config.", from_text=False)
    return cfg
