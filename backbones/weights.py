"""Load a local checkpoint into a backbone, strictly, and fingerprint it.

The feature store records which weights produced each feature, so loading returns the
sha256 of the file. Loading is strict on purpose: a checkpoint that silently loads half
its tensors yields features that look fine and are wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# Wrappers people save checkpoints under (DataParallel, Lightning, timm/ours).
_NESTED_KEYS = ("state_dict", "model")
_PREFIXES = ("module.",)


class WeightsError(ValueError):
    """A checkpoint does not fit the model; the message names every offending key."""

    def __init__(
        self,
        path: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
        reason: str | None = None,
    ) -> None:
        self.path = path
        self.missing = missing = missing or []
        self.unexpected = unexpected = unexpected or []
        self.mismatched = mismatched = mismatched or []
        lines = [f"weights {path} do not fit the model:"]
        if reason:
            lines.append(f"  {reason}")
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for key, want, got in mismatched:
            lines.append(f"  shape mismatch for {key}: model {list(want)}, file {list(got)}")
        super().__init__("\n".join(lines))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    """Find the state dict inside common checkpoint wrappers and strip `module.` prefixes."""
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TypeError("checkpoint is not a state dict of tensors")
    state = dict(obj)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], path: str = "<state dict>"
) -> None:
    """Raise WeightsError unless `state` has exactly the model's keys with the same shapes."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = [
        (k, tuple(own[k].shape), tuple(state[k].shape))
        for k in own
        if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(path, missing, unexpected, mismatched)


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load a torchvision-layout state dict from a local file; return the file's sha256.

    Uses `torch.load(weights_only=True)` so a checkpoint cannot run code on load.
    """
    path = str(path)
    obj = torch.load(path, weights_only=True, map_location="cpu")
    try:
        state = _unwrap(obj)
    except TypeError as err:
        raise WeightsError(path, reason=str(err)) from err
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    sha = file_sha256(path)
    log.info("loaded weights %s (sha256 %s) into %s", path, sha[:12], type(model).__name__)
    return sha


def provenance_path(weights: str | Path) -> Path:
    """The sidecar an export writes next to a checkpoint: `X.pth` -> `X.json`."""
    return Path(weights).with_suffix(".json")


def weights_provenance(weights: str | Path, sha256: str) -> dict[str, str]:
    """{'weights_run': RUN} when `weights` is an export of a fine-tuning run (its sidecar
    names the run and the file's sha256 matches `sha256`), else {} (a stale sidecar is
    ignored with a warning, so a store never names a run that did not make its weights)."""
    sidecar = provenance_path(weights)
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        log.warning("unreadable provenance sidecar %s: ignored", sidecar)
        return {}
    if not isinstance(meta, dict) or "run" not in meta:
        return {}
    if meta.get("sha256") != sha256:
        log.warning("%s does not describe %s (sha256 differs): ignored", sidecar, weights)
        return {}
    return {"weights_run": str(meta["run"])}
