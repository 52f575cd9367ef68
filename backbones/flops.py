"""Measured cost of one view: multiply-adds and parameters, per stage and in total.

Costs are counted from the model itself with `torch.utils.flop_counter.FlopCounterMode`,
on the 'meta' device (shapes only, no arithmetic, so it is free), falling back to CPU with
a one-image batch if an op has no meta kernel. FlopCounterMode counts 2 FLOPs per
multiply-add; we divide by 2 and report GMACs, which is what the papers call "GFLOPs"
(MF-Net says so explicitly: "FLOPs, i.e. floating-point multiplication-adds"). Only
convolutions and matrix products are counted; BN, activations, pooling and additions are
not, again as in the papers.

`stage_gmacs[s]` is the cost of running the network up to and including stage `s`
(cumulative), the lookup SoF-Net's eq. 3.10 needs; the last stage's value is the total
minus the classifier head (`head_gmacs`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from backbones.build import CLIP_BACKBONES, _builder
from backbones.staged import StagedBackbone, global_pool
from featstore.atomic import write_text

log = logging.getLogger(__name__)

CACHE_ENV = "C2F_FLOPS_CACHE"
# Class count of the configuration each backbone was published with: costs and parameter
# counts include the classifier head, which depends on it (MF-Net 3D: Kinetics-400).
PUBLISHED_CLASSES = {"mfnet3d": 400}
DEFAULT_CLASSES = 1000
_ENTRY = re.compile(r"^(?P<name>[a-z0-9_]+)@(?:(?P<frames>\d+)x)?(?P<size>\d+)$")

# Figures as the papers print them, shown next to ours so a reader can compare. They are
# references only: nothing in this module returns them as a measurement.
PUBLISHED: dict[tuple[str, int, int], dict[str, str]] = {
    ("mobilenet_v2", 112, 1): {"gmacs": "0.08", "source": "LiteEval §4.1"},
    ("resnet101", 224, 1): {"gmacs": "7.82", "params": "44.5", "source": "LiteEval §4.1"},
    ("resnet50", 224, 1): {"gmacs": "4.11", "source": "AR-Net Table 1"},
    ("mfnet2d", 224, 1): {"gmacs": "0.861", "params": "5.8", "source": "MF-Net Table 2"},
    ("mfnet3d", 224, 16): {"gmacs": "11.1", "params": "8.0", "source": "MF-Net Table 2"},
}
# The published configurations above plus AR-Net's resolution ladder.
DEFAULT_ENTRIES = [
    "mobilenet_v2@112", "resnet101@224", "resnet50@224", "mfnet2d@224", "mfnet3d@16x224",
    "efficientnet_b0@224", "resnet34@168", "resnet18@112", "mobilenet_v2@84",
]


@dataclasses.dataclass(frozen=True)
class ViewCost:
    """Cost of one backbone at one input size (per frame; per clip for clip backbones)."""

    backbone: str
    input_size: int
    gmacs: float  # total multiply-adds, 1e9, including the classifier head
    params: float  # parameters, millions
    stage_gmacs: dict[str, float]  # cumulative GMACs up to and including each stage
    feature_dim: int
    stage_dims: dict[str, int]  # channels of each stage's pooled output
    params_count: int = 0  # parameters, exact
    head_gmacs: float = 0.0  # the classifier alone
    frames: int = 1  # clip length the cost is for (1 for image backbones)
    num_classes: int = DEFAULT_CLASSES  # classifier width the head cost and params assume


def parse_entry(entry: str) -> tuple[str, int, int]:
    """'resnet50@224' -> ('resnet50', 224, 1); 'mfnet3d@16x224' -> ('mfnet3d', 224, 16)."""
    match = _ENTRY.match(entry.strip())
    if not match:
        raise ValueError(f"bad backbone entry {entry!r}: expected NAME@SIZE or NAME@FRAMESxSIZE")
    _builder(match["name"])
    return match["name"], int(match["size"]), int(match["frames"] or 1)


def _input_shape(backbone: str, input_size: int, frames: int) -> tuple[int, ...]:
    if backbone in CLIP_BACKBONES:
        return (1, 3, frames, input_size, input_size)
    if frames != 1:
        raise ValueError(f"{backbone} takes single images; frames must be 1, got {frames}")
    return (1, 3, input_size, input_size)


def count_gmacs(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(GMACs of one call `fn(*args)`, its output): the project's one FLOP counter.

    FlopCounterMode counts 2 FLOPs per multiply-add of matrix products and convolutions; we
    report half, GMACs. Fused RNN kernels (oneDNN on CPU, cuDNN on GPU) are invisible to the
    counter, so they are switched off while counting and nn.LSTM / nn.GRU decompose into the
    matrix products it counts. Gradients are off: counting never trains.
    """
    counter = FlopCounterMode(display=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32.*")
        with (torch.no_grad(), torch.backends.mkldnn.flags(enabled=False),
              torch.backends.cudnn.flags(enabled=False), counter):
            out = fn(*args)
    return counter.get_total_flops() / 2e9, out


def model_cost(model: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[float, int]:
    """(GMACs of one forward pass on a zero input of `input_shape`, exact parameter count).

    For models built outside the registry (ablations, variants); runs on the model's device.
    """
    device = next(model.parameters()).device
    with torch.no_grad():
        gmacs, _ = count_gmacs(model.eval(), torch.zeros(input_shape, device=device))
    return gmacs, sum(p.numel() for p in model.parameters())


def _measure_on(device: str, backbone: str, num_classes: int,
                shape: tuple[int, ...]) -> tuple[StagedBackbone, dict[str, float],
                                                 dict[str, int], float]:
    with torch.device(device):
        model = _builder(backbone)(num_classes).eval()
        x = torch.zeros(shape)
    stage_gmacs: dict[str, float] = {}
    stage_dims: dict[str, int] = {}
    total = 0.0
    with torch.no_grad():
        for name, stage in model.stages():
            gmacs, x = count_gmacs(stage, x)
            total += gmacs
            stage_gmacs[name] = total
            stage_dims[name] = int(x.shape[1])
        head_gmacs, _ = count_gmacs(model.head, global_pool(x))
    return model, stage_gmacs, stage_dims, head_gmacs


def _source_hash() -> str:
    """Hash of the backbones package source: a disk cache entry is valid only for it."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_path(backbone: str, input_size: int, frames: int) -> Path | None:
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    return Path(root) / f"{_source_hash()}-{backbone}-{frames}x{input_size}.json"


def _from_disk(path: Path | None) -> ViewCost | None:
    if path is None or not path.exists():
        return None
    try:
        return ViewCost(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        log.warning("ignoring unreadable FLOPs cache entry %s: %s", path, err)
        return None


def _to_disk(path: Path | None, cost: ViewCost) -> None:
    if path is None:
        return
    write_text(path, json.dumps(dataclasses.asdict(cost)))


@functools.lru_cache(maxsize=256)
def _view_cost(backbone: str, input_size: int, frames: int) -> ViewCost:
    shape = _input_shape(backbone, input_size, frames)
    cache = _cache_path(backbone, input_size, frames)
    cached = _from_disk(cache)
    if cached is not None:
        return cached
    num_classes = PUBLISHED_CLASSES.get(backbone, DEFAULT_CLASSES)
    try:
        measured = _measure_on("meta", backbone, num_classes, shape)
    except (NotImplementedError, RuntimeError) as err:
        log.info("meta-device count failed for %s (%s); counting on CPU", backbone, err)
        measured = _measure_on("cpu", backbone, num_classes, shape)
    model, stage_gmacs, stage_dims, head_gmacs = measured
    params = sum(p.numel() for p in model.parameters())
    last = list(stage_gmacs)[-1]
    cost = ViewCost(
        backbone=backbone, input_size=input_size, gmacs=stage_gmacs[last] + head_gmacs,
        params=params / 1e6, stage_gmacs=stage_gmacs, feature_dim=model.feature_dim,
        stage_dims=stage_dims, params_count=params, head_gmacs=head_gmacs, frames=frames,
        num_classes=num_classes,
    )
    _to_disk(cache, cost)
    return cost


def view_cost(backbone: str, input_size: int, frames: int = 1) -> ViewCost:
    """Measured cost of `backbone` on input_size x input_size images (or frames-long clips).

    Memoised per process; set C2F_FLOPS_CACHE=DIR to also keep results on disk, keyed by
    a hash of the backbones source so an architecture change invalidates them.
    """
    cost = _view_cost(backbone, int(input_size), int(frames))
    # Fresh dicts so a caller mutating them cannot corrupt the memoised value.
    return dataclasses.replace(cost, stage_gmacs=dict(cost.stage_gmacs),
                               stage_dims=dict(cost.stage_dims))


def flops_table(entries: list[str | tuple[str, int] | tuple[str, int, int]]) -> list[ViewCost]:
    """Costs for entries given as 'name@size', 'name@FxSIZE', (name, size) or (name, size, F)."""
    rows = []
    for entry in entries:
        if isinstance(entry, str):
            name, size, frames = parse_entry(entry)
        else:
            name, size, frames = (*entry, 1)[:3]
        rows.append(view_cost(name, size, frames))
    return rows
