"""The end-to-end half of the model contract: clips in, the cached methods' `Batch` out.

A cached-feature method reads `Batch.features[view]` [B, T, D] (and `Batch.stages` when it
needs them) from the feature store. `ClipEncoder` computes exactly those tensors from pixels:
one backbone per view, each at its own input size, run on every frame of a clip batch
[B, T, 3, S, S]. An end-to-end model is therefore "encoder, then the unchanged method"
(`EndToEnd`), and methods, losses, GFLOPs accounting and evaluation stay shared.

Views are the store's `NAME=BACKBONE@SIZE` specs (`pipeline.extract.ExtractView`); a view
without weights is built exactly as extraction builds it (seeded random init, calibrated
BatchNorm), so an encoder in eval mode reproduces the store's features for the same frames
(tests/test_finetune_encoder.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones import CLIP_BACKBONES, build_backbone
from backbones.flops import view_cost
from backbones.staged import StagedBackbone
from pipeline.extract import RANDOM_INIT_SEED, ExtractView, parse_view
from trainers.data import StoreInfo, ViewInfo
from trainers.method import Batch, MethodOutput, TrainState


def parse_clip_view(spec: str) -> ExtractView:
    """'NAME=BACKBONE@SIZE' as `c2f extract` parses it, but clip (3D) backbones allowed: an
    end-to-end run feeds them whole clips."""
    name, _, rest = spec.partition("=")
    if rest.partition("@")[0] in CLIP_BACKBONES:
        backbone, _, size = rest.partition("@")
        if not (name and size.isdigit()):
            raise ValueError(f"bad view {spec!r}: expected NAME=BACKBONE@SIZE")
        return ExtractView(name=name, backbone=backbone, input_size=int(size))
    return parse_view(spec)


def build_view_backbone(view: ExtractView) -> StagedBackbone:
    """The backbone of `view` initialised as `c2f extract` initialises it (weights file, or
    random init seeded with RANDOM_INIT_SEED without touching the caller's RNG)."""
    if view.weights is not None:
        return build_backbone(view.backbone, weights=view.weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build_backbone(view.backbone)


def clip_sizes(views: Sequence[ExtractView]) -> tuple[int, ...]:
    """Distinct input sizes of the views, smallest first (the clip loader makes one tensor each)."""
    return tuple(sorted({v.input_size for v in views}))


class ClipEncoder(nn.Module):
    """One backbone per view; `frozen` views keep eval-mode BatchNorm and get no gradients.

    bf16: run the backbones under bfloat16 autocast; the features leave as float32, so the
    method (Gumbel sampling, log-softmax, losses) always computes in float32.
    """

    def __init__(
        self,
        views: Sequence[ExtractView],
        with_stages: bool = False,
        frozen: Sequence[str] = (),
        bf16: bool = False,
    ) -> None:
        super().__init__()
        names = [v.name for v in views]
        if not views or len(set(names)) != len(names):
            raise ValueError(f"need one or more views with distinct names, got {names}")
        unknown = sorted(set(frozen) - set(names))
        if unknown:
            raise ValueError(f"frozen names unknown views {unknown}; views are {names}")
        kinds = {v.backbone in CLIP_BACKBONES for v in views}
        if len(kinds) > 1:
            raise ValueError("clip (3D) and image views cannot share a Batch: their time axes "
                             "differ (one feature per clip vs one per frame)")
        self.views = {v.name: v for v in views}
        self.with_stages = with_stages
        self.fixed = tuple(frozen)  # frozen for the whole run (`--freeze`)
        self.frozen: tuple[str, ...] = ()
        self.bf16 = bf16
        self.backbones = nn.ModuleDict({v.name: build_view_backbone(v) for v in views})
        self.freeze_for_stage(())

    def freeze_for_stage(self, names: Sequence[str]) -> None:
        """Freeze `names` on top of the run's fixed views and let every other backbone learn.

        A staged method may freeze a trained backbone in a later stage (C2F's classroom stage
        keeps the fine pathway it trained first as the frozen teacher, eq. 4). A frozen
        backbone gets no gradients and keeps eval-mode BatchNorm. The ImageNet classifier is
        never trained: kept so the export stays in torchvision layout, and without gradients
        so DDP sees no parameter that never gets one.
        """
        unknown = sorted(set(names) - set(self.views))
        if unknown:
            raise ValueError(f"cannot freeze unknown views {unknown}; views are "
                             f"{sorted(self.views)}")
        self.frozen = tuple(n for n in self.views if n in set(self.fixed) | set(names))
        for name, backbone in self.backbones.items():
            backbone.requires_grad_(name not in self.frozen)
            backbone.head.requires_grad_(False)
            if name in self.frozen:
                backbone.eval()
            else:
                backbone.train(self.training)

    def train(self, mode: bool = True) -> ClipEncoder:
        super().train(mode)
        for name in self.frozen:
            self.backbones[name].eval()
        return self

    def store_info(self, classes: Sequence[str], frames: int = 1) -> StoreInfo:
        """What the methods' Config.validate/build read, as a store of these views with stage
        features would say it (dims and per-stage costs measured by backbones.flops)."""
        infos = {}
        for name, v in self.views.items():
            clip = v.backbone in CLIP_BACKBONES
            cost = view_cost(v.backbone, v.input_size, frames if clip else 1)
            stages = list(cost.stage_gmacs)
            infos[name] = ViewInfo(
                name=name,
                dim=int(self.backbones[name].feature_dim),
                backbone=v.backbone,
                input_size=v.input_size,
                gmacs_per_frame=float(cost.gmacs),
                stage_gmacs={s: float(cost.stage_gmacs[s]) for s in stages},
                stage_dims={s: int(cost.stage_dims[s]) for s in stages},
            )
        return StoreInfo(views=infos, classes=list(classes), num_classes=len(classes))

    def view_input(self, clips: torch.Tensor | Mapping[int, torch.Tensor], size: int) -> torch.Tensor:
        """[B, T, 3, S, S] for a view of size S: the loader's tensor of that size, or the one
        clip tensor resized on its device (antialiased bilinear, as the store's Pillow resize)."""
        if isinstance(clips, Mapping):
            if size not in clips:
                raise ValueError(f"no clip tensor of size {size} (have {sorted(clips)})")
            return clips[size]
        if clips.shape[-1] == size and clips.shape[-2] == size:
            return clips
        b, t = clips.shape[:2]
        x = F.interpolate(clips.flatten(0, 1), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        return x.view(b, t, *x.shape[1:])

    def forward(
        self,
        clips: torch.Tensor | Mapping[int, torch.Tensor],
        targets: torch.Tensor,
        video_ids: Sequence[str],
        views: Sequence[str] | None = None,
    ) -> Batch:
        """Clips (one tensor, or {size: tensor}) -> the Batch a cached method takes.

        Every clip holds T real frames (the loader repeats frames of short videos), so
        lengths are T and the mask is all True; a clip (3D) backbone gives one feature per
        clip (length 1, its cost that of the whole T-frame clip: `store_info(frames=T)`).
        """
        features: dict[str, torch.Tensor] = {}
        stages: dict[str, dict[str, torch.Tensor]] = {}
        for name in views or list(self.views):
            v = self.views[name]
            x = self.view_input(clips, v.input_size)
            b, t = x.shape[:2]
            if v.backbone in CLIP_BACKBONES:  # one feature per clip: [B, 3, T, S, S] -> [B, 1, D]
                frames, t = x.transpose(1, 2).contiguous(), 1
            else:
                frames = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            grad = torch.is_grad_enabled() and name not in self.frozen
            amp = torch.autocast(frames.device.type, dtype=torch.bfloat16,
                                 enabled=self.bf16)
            with torch.set_grad_enabled(grad), amp:
                if self.with_stages:
                    out = self.backbones[name].forward_stages(frames)
                    stages[name] = {s: y.float().view(b, t, -1) for s, y in out.items()
                                    if s not in ("features", "logits")}
                    feats = out["features"]
                else:
                    feats = self.backbones[name].forward_features(frames)
            features[name] = feats.float().view(b, t, -1)
        first = next(iter(features.values()))
        b, t = first.shape[:2]
        lengths = torch.full((b,), t, dtype=torch.int64, device=first.device)
        mask = torch.ones(b, t, dtype=torch.bool, device=first.device)
        return Batch(features, lengths, mask, targets.to(first.device), list(video_ids), stages)


class EndToEnd(nn.Module):
    """An encoder in front of an unchanged cached-feature method."""

    def __init__(self, encoder: ClipEncoder, method: nn.Module) -> None:
        super().__init__()
        missing = [v for v in method.required_views if v not in encoder.views]
        if missing:
            raise ValueError(f"method needs views {missing} the encoder lacks "
                             f"(has {sorted(encoder.views)})")
        if method.needs_stages and not encoder.with_stages:
            raise ValueError("method needs stage features: build the encoder with_stages=True")
        self.encoder = encoder
        self.method = method

    def encode(self, clips, targets: torch.Tensor, video_ids: Sequence[str]) -> Batch:
        return self.encoder(clips, targets, video_ids, self.method.required_views)

    def forward(self, clips, targets: torch.Tensor, video_ids: Sequence[str],
                state: TrainState) -> tuple[MethodOutput, Batch]:
        batch = self.encode(clips, targets, video_ids)
        return self.method(batch, state), batch

    def loss(self, out: MethodOutput, batch: Batch,
             state: TrainState) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss: the method's own (an end-to-end variant may change a stage's)."""
        return self.method.loss(out, batch, state)
