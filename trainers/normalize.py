"""Standardise cached features with statistics of the training split, inside the model.

Why: cached backbone features come at any scale (post-ReLU ImageNet features have large
positive means; other extractors give values 10x smaller or larger). The methods' defaults
(learning rate, Gumbel temperatures, LSTM initialisation) assume inputs of about unit scale:
features 10x too large saturate the LSTM gates from the first step, features 10x too small
need weights 10x larger before the class evidence moves the prediction. LiteEval's official
code L2-normalises features and puts BatchNorm in front of its RNNs for the same reason.

`attach(model, info, loader)` fits the per-dimension mean and standard deviation of every view
(and per-stage feature) the method reads, over the valid frames of `loader` (the training
split), stores them as buffers of a `feature_norm` submodule (so they travel in every
checkpoint), and registers a forward pre-hook that standardises each batch before the method
sees it: training, validation, test and `c2f eval` all read the same normalised features.
Padding stays zero. Methods that call their own parts directly use `apply(model, batch)`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from trainers.data import StoreInfo
from trainers.method import Batch

log = logging.getLogger(__name__)


def _buffer_name(key: tuple[str, str | None], what: str) -> str:
    view, stage = key
    return f"{what}__{view}" + (f"__{stage}" if stage else "")


class FeatureNorm(nn.Module):
    """(x - mean) / std per feature dimension, for each (view, stage or None) it was given."""

    def __init__(self, dims: dict[tuple[str, str | None], int]) -> None:
        super().__init__()
        self.keys = sorted(dims, key=lambda k: (k[0], k[1] or ""))
        for key in self.keys:
            self.register_buffer(_buffer_name(key, "mean"), torch.zeros(dims[key]))
            self.register_buffer(_buffer_name(key, "std"), torch.ones(dims[key]))

    def stats(self, key: tuple[str, str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) buffers of one view or stage."""
        return getattr(self, _buffer_name(key, "mean")), getattr(self, _buffer_name(key, "std"))

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> None:
        """Mean and std over every valid frame of `batches` (float64 sums, one pass).

        Takes the loader's float16 batches as they come: float16 -> float64 is exact, so the
        statistics equal those of the float32 batches `Batch.to` makes, without that pass.
        """
        sums: dict = {}
        for batch in batches:
            mask = batch.mask.unsqueeze(2).to(torch.float64)
            for key in self.keys:
                x = _get(batch, key).to(torch.float64) * mask
                acc = sums.setdefault(key, [0.0, 0.0, 0.0])
                acc[0] += mask.sum()
                acc[1] = acc[1] + x.sum(dim=(0, 1))
                acc[2] = acc[2] + x.square().sum(dim=(0, 1))
        for key, (n, s, sq) in sums.items():
            mean = s / n
            std = (sq / n - mean.square()).clamp_min(0.0).sqrt()
            # a dimension that never varies is left unscaled rather than divided by ~0
            std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
            m, sd = self.stats(key)
            m.copy_(mean.to(m.dtype))
            sd.copy_(std.to(sd.dtype))
        log.info("feature normalisation fitted on %d frames: %s", int(sums and next(
            iter(sums.values()))[0]), ", ".join(
            f"{v}{'/' + s if s else ''} mean |mu| {self.stats((v, s))[0].abs().mean():.3g} "
            f"mean sigma {self.stats((v, s))[1].mean():.3g}" for v, s in self.keys))

    def forward(self, batch: Batch) -> Batch:
        mask = batch.mask.unsqueeze(2)
        features = dict(batch.features)
        stages = {v: dict(st) for v, st in batch.stages.items()}
        for key in self.keys:
            view, stage = key
            mean, std = self.stats(key)
            x = _get(batch, key)
            out = ((x - mean) / std) * mask.to(x.dtype)
            if stage is None:
                features[view] = out
            else:
                stages[view][stage] = out
        return Batch(features, batch.lengths, batch.mask, batch.targets, batch.video_ids,
                     stages)


def _get(batch: Batch, key: tuple[str, str | None]) -> torch.Tensor:
    view, stage = key
    return batch.features[view] if stage is None else batch.stages[view][stage]


def _dims(model: nn.Module, info: StoreInfo) -> dict[tuple[str, str | None], int]:
    dims: dict[tuple[str, str | None], int] = {}
    for view in model.required_views:
        dims[(view, None)] = info.views[view].dim
        if model.needs_stages:
            for stage, dim in info.views[view].stage_dims.items():
                dims[(view, stage)] = dim
    return dims


def _pre_hook(module: nn.Module, args: tuple) -> tuple:
    return (module.feature_norm(args[0]), *args[1:])


def attach(model: nn.Module, info: StoreInfo, batches: Iterable[Batch] | None = None) -> nn.Module:
    """Put a FeatureNorm in front of `model` (fitted on `batches` when given; otherwise identity
    until a checkpoint's buffers are loaded) and return the same model."""
    norm = FeatureNorm(_dims(model, info))
    if batches is not None:
        norm.fit(batches)
    tensors = [*model.parameters(), *model.buffers()]
    if tensors:
        norm.to(tensors[0].device)
    model.add_module("feature_norm", norm)
    model.register_forward_pre_hook(_pre_hook)
    return model


def apply(model: nn.Module, batch: Batch) -> Batch:
    """`batch` as the model's forward sees it (for code that calls a method's parts directly)."""
    norm = getattr(model, "feature_norm", None)
    return batch if norm is None else norm(batch)
