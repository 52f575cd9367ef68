"""The typed configuration of an end-to-end run (`c2f finetune`).

Sources, later ones win, exactly as for `c2f train` (trainers/config.py, whose parsing this
reuses): dataclass defaults with the method name's presets (its MethodSpec) -> a JSON/TOML file -> flags ->
`--set KEY=VALUE` (a FinetuneConfig key, or a key of the method's Config, bare or dotted as
`method_config.KEY`). The resolved config is written to RUN/config.json and a re-run must
match it.

Defaults follow the papers' fine-tuning recipes scaled to a small run: SGD with momentum 0.9
and weight decay 5e-4 (C2F §4, TSN), gradient-norm clipping at 20 (TSN, AR-Net), the
backbone at 0.2x and new heads at 5x the base learning rate (AR-Net's and AdaFocus' public
code), a linear warm-up then cosine decay.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainers.config import convert, parse_sets, read_config_file
from trainers.encoder import parse_clip_view
from trainers.methods import method_spec

#: methods that run end to end (LiteEval stays on cached features: docs/finetune.md)
E2E_METHODS = ("uniform", "lstm", "uniform-cf", "lstm-cf", "arnet", "random-policy", "c2f",
               "sofnet")


@dataclass
class FinetuneConfig:
    """Loop settings of an end-to-end run; the method's own knobs live in `method_config`.

    views: NAME=BACKBONE@SIZE specs, as for `c2f extract`. weights: {view: torchvision-layout
    checkpoint} to start from (random init otherwise). freeze: views whose backbone is not
    trained. tsm: ResNet views given a temporal shift (backbones/tsm.py; their features then
    depend on the clip, so `c2f extract` of their export is no longer the same model). frames: T frames per clip. batch_size: clips per step over all workers.
    steps_per_epoch: 0 = ceil(train videos / batch_size). lr: base learning rate (the
    method's policy); backbones get lr x backbone_lr_mult, parameters under a module named
    `head`/`classifier` get lr x head_lr_mult. warmup_epochs: linear warm-up (may be
    fractional). schedule: cosine to 0, or multistep (x0.1 at each epoch in `milestones`).
    clip_grad: max gradient norm (0 = off). precise_bn_batches: batches of training videos
    (evaluation crops) over which BatchNorm statistics are recomputed before each validation
    (0 = keep the running averages). bf16: bfloat16 autocast of the backbones on CUDA (the
    method stays float32; no effect on CPU). workers: Ray Train workers (1 = no Ray).
    gpus_per_worker: GPUs each worker holds (0 = CPU and gloo). address: Ray cluster address
    (None = a local Ray). storage: checkpoint storage every node can read (required for a
    multi-node run). max_failures: worker failures Ray Train recovers from.
    jpeg_decoder: pil (decode and augment in the loader), dali (DALI decodes each batch in
    the main process, nvJPEG on CUDA; crop/flip/resize/normalise as torch ops on `device`:
    trainers/clips_dali.py) or auto (dali when importable and the device is CUDA, else pil).
    """

    method: str = "uniform"
    shards: str = ""
    out: str = ""
    views: list[str] = field(default_factory=lambda: ["fine=resnet18@112"])
    weights: dict = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)
    tsm: list[str] = field(default_factory=list)
    frames: int = 8
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    backbone_lr_mult: float = 0.2
    head_lr_mult: float = 5.0
    warmup_epochs: float = 1.0
    schedule: Literal["cosine", "multistep"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    clip_grad: float = 20.0
    precise_bn_batches: int = 8
    bf16: bool = True
    seed: int = 0
    device: str = "cpu"
    jpeg_decoder: Literal["pil", "dali", "auto"] = "pil"
    val_split: str = "val"
    eval_split: str = "test"
    log_every: int = 20
    workers: int = 1
    gpus_per_worker: float = 0.0
    address: str | None = None
    storage: str | None = None
    max_failures: int = 2
    method_config: Any = None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["method_config"] = dataclasses.asdict(self.method_config)
        return json.loads(json.dumps(d))

    def check(self) -> None:
        """Refuse values that cannot work, naming the key."""
        if self.method not in E2E_METHODS:
            raise ValueError(f"method {self.method!r} has no end-to-end mode yet; choose one "
                             f"of {list(E2E_METHODS)} (LiteEval stays on cached features)")
        names = [parse_clip_view(v).name for v in self.views]
        unknown = sorted((set(self.weights) | set(self.freeze) | set(self.tsm)) - set(names))
        if unknown:
            raise ValueError(f"weights/freeze/tsm name unknown views {unknown}; views are {names}")
        if self.method == "sofnet" and self.tsm:
            raise ValueError("SoF-Net runs its backbone frame by frame (frames stop early), "
                             "so a temporal shift across frames (tsm) cannot apply")
        for key in ("frames", "batch_size", "epochs", "workers"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of "
                             f"workers={self.workers} (each worker takes an equal share)")
        for key in ("steps_per_epoch", "precise_bn_batches", "weight_decay", "warmup_epochs", "clip_grad",
                    "gpus_per_worker", "max_failures"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        for key in ("lr", "backbone_lr_mult", "head_lr_mult"):
            if getattr(self, key) <= 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)}")


FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"method_config"}


def _set(obj: Any, key: str, value: Any, prefix: str, from_text: bool) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)} - {"method_config"}
    if key not in names:
        raise ValueError(f"unknown config key {prefix + key!r} (known: {sorted(names)})")
    setattr(obj, key, convert(value, hints[key], prefix + key, from_text))


def resolve_finetune_config(
    method: str | None = None,
    file: str | os.PathLike | None = None,
    sets: list[str] | None = None,
    **flags: Any,
) -> FinetuneConfig:
    """Defaults < file < flags (None = not given) < --set pairs; paths made absolute."""
    data = read_config_file(file) if file else {}
    method = method or data.pop("method", None) or "uniform"
    data.pop("method", None)
    cfg = FinetuneConfig(method=method, method_config=method_spec(method).default_config())
    for key, value in (data.pop("method_config", None) or {}).items():
        _set(cfg.method_config, key, value, "method_config.", False)
    for key, value in data.items():
        _set(cfg, key, value, "", False)
    for key, value in flags.items():
        if value is not None:
            _set(cfg, key, os.fspath(value) if isinstance(value, os.PathLike) else value, "",
                 False)
    method_names = {f.name for f in dataclasses.fields(cfg.method_config)}
    for key, value in parse_sets(sets or []):
        if key.startswith("method_config."):
            _set(cfg.method_config, key.split(".", 1)[1], value, "method_config.", True)
        elif key in FIELDS and key != "method":
            _set(cfg, key, value, "", True)
        elif key in method_names:
            _set(cfg.method_config, key, value, "method_config.", True)
        else:
            raise ValueError(f"unknown config key {key!r} (run keys: {sorted(FIELDS)}; "
                             f"{method} keys: {sorted(method_names)})")
    if not cfg.shards or not cfg.out:
        raise ValueError("need --shards DIR and --out RUN")
    cfg.shards = str(Path(cfg.shards).resolve())
    cfg.out = str(Path(cfg.out).resolve())
    cfg.weights = {k: str(Path(v).resolve()) for k, v in cfg.weights.items()}
    cfg.check()
    return cfg


def finetune_config_from_dict(d: dict[str, Any]) -> FinetuneConfig:
    """A FinetuneConfig read back from RUN/config.json (same type checks)."""
    d = dict(d)
    cfg = FinetuneConfig(method=d.pop("method"), method_config=None)
    cfg.method_config = method_spec(cfg.method).default_config()
    for key, value in (d.pop("method_config", None) or {}).items():
        _set(cfg.method_config, key, value, "method_config.", False)
    for key, value in d.items():
        _set(cfg, key, value, "", False)
    return cfg
