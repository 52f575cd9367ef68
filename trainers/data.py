"""From a feature store to padded training batches, plus what every method needs to know about
the store (views, dims, measured per-frame costs, classes).

Costs come from `backbones.flops.view_cost` of each view's recorded backbone and input size, so
the GFLOPs a method reports are measured from the backbone that produced the features, never
typed in. Costs are multiply-adds (GMACs), which is what the papers call "GFLOPs".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from backbones.flops import view_cost
from featstore.schema import GMACS_PER_FRAME, UNKNOWN_BACKBONE
from trainers.method import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewInfo:
    """One stored view: its feature size and the measured cost of computing it for one frame.

    stage_gmacs is cumulative (cost up to and including each stage); stage_dims are the stored
    per-stage feature sizes (empty when the store has no stage features for the view).
    """

    name: str
    dim: int
    backbone: str
    input_size: int
    gmacs_per_frame: float
    stage_gmacs: dict[str, float]
    stage_dims: dict[str, int]


@dataclass(frozen=True)
class StoreInfo:
    """What a method's Config.validate and build need to know about a store."""

    views: dict[str, ViewInfo]
    classes: list[str]
    num_classes: int


def store_info(store) -> StoreInfo:
    """Describe an open feature store (see featstore.open_store), with measured costs."""
    views: dict[str, ViewInfo] = {}
    first_ids = store.video_ids()
    for name in store.views:
        attrs = store.view_attrs(name)
        backbone, size = str(attrs["backbone"]), int(attrs["input_size"])
        given = attrs.get(GMACS_PER_FRAME)  # imports of networks not in backbones/
        if given is None and backbone == UNKNOWN_BACKBONE:
            raise ValueError(f"view {name!r} names no backbone and no per-frame cost; re-import "
                             f"it with --backbone {name}=NAME@SIZE or --gmacs {name}=X")
        cost = view_cost(backbone, size) if given is None else None
        stage_names = list(store.stage_names(name))
        stage_dims: dict[str, int] = {}
        if stage_names and first_ids:
            stages = store.read_stages(first_ids[0], name)
            stage_dims = {s: int(stages[s].shape[-1]) for s in stage_names}
        measured_stages = cost.stage_gmacs if cost else {}
        missing = [s for s in stage_names if s not in measured_stages]
        if missing:
            raise ValueError(
                f"view {name!r}: stages {missing} have no measured cost for {backbone}@{size}"
            )
        views[name] = ViewInfo(
            name=name,
            dim=int(attrs["dim"]),
            backbone=backbone,
            input_size=size,
            gmacs_per_frame=float(cost.gmacs if cost else given),
            stage_gmacs={s: float(measured_stages[s]) for s in stage_names},
            stage_dims=stage_dims,
        )
    classes = list(store.classes)
    return StoreInfo(views=views, classes=classes, num_classes=len(classes))


class FeatureLoader:
    """A re-iterable of padded `Batch`es over one split of a store.

    Shuffling is seeded by (seed, epoch): the loop calls `set_epoch` before each epoch so that
    a resumed run sees exactly the batches an uninterrupted run would. Without `set_epoch`, each
    new iteration advances the epoch by one. Features are read once and kept in memory as
    float16 (`cache=True`), since the trainers make many passes over small cached features.
    """

    def __init__(
        self,
        store,
        views: Sequence[str],
        split: str | None,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        with_stages: bool = False,
        cache: bool = True,
    ) -> None:
        missing = [v for v in views if v not in store.views]
        if missing:
            raise ValueError(f"store has no view {missing[0]!r} (has {list(store.views)})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.views = list(views)
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.with_stages = with_stages
        self.cache = cache
        self.video_ids = list(store.video_ids(split))
        self.class_index = {c: i for i, c in enumerate(store.classes)}
        self.epoch = 0
        self._cache: dict[str, tuple] = {}

    def __len__(self) -> int:
        return (len(self.video_ids) + self.batch_size - 1) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Fix the shuffle order of the next iteration to the one of `epoch`."""
        self.epoch = epoch

    def _read(self, video_id: str) -> tuple:
        if video_id in self._cache:
            return self._cache[video_id]
        feats = self.store.read_views(video_id, self.views)
        stages = {}
        if self.with_stages:
            stages = {v: self.store.read_stages(video_id, v) for v in self.views
                      if self.store.stage_names(v)}
        labels = [self.class_index[c] for c in self.store.labels(video_id)]
        item = (feats, stages, labels)
        if self.cache:
            self._cache[video_id] = item
        return item

    def __iter__(self) -> Iterator[Batch]:
        order = np.arange(len(self.video_ids))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            ids = [self.video_ids[i] for i in order[start : start + self.batch_size]]
            yield collate([self._read(v) for v in ids], ids, len(self.class_index))


def collate(items: list[tuple], video_ids: list[str], num_classes: int) -> Batch:
    """Pad per-video arrays to the longest video of the batch (zeros past each length)."""
    lengths = [len(next(iter(feats.values()))) for feats, _, _ in items]
    b, t = len(items), max(lengths)

    def pad(arrays: list[np.ndarray]) -> torch.Tensor:
        out = np.zeros((b, t, arrays[0].shape[-1]), dtype=np.float32)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = a
        return torch.from_numpy(out)

    features = {v: pad([feats[v] for feats, _, _ in items]) for v in items[0][0]}
    stages = {
        v: {s: pad([st[v][s] for _, st, _ in items]) for s in items[0][1][v]} for v in items[0][1]
    }
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    mask = torch.arange(t)[None, :] < lengths_t[:, None]
    targets = torch.zeros(b, num_classes)
    for i, (_, _, labels) in enumerate(items):
        targets[i, labels] = 1.0
    return Batch(features, lengths_t, mask, targets, list(video_ids), stages)


def make_loader(
    store,
    views: Sequence[str],
    split: str | None,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    with_stages: bool = False,
    cache: bool = True,
) -> FeatureLoader:
    """Padded float32 batches of `views` (and their stage features) from one split.

    cache: keep each video's float16 features in memory after its first read (turn off for
    stores larger than RAM; every epoch then reads the store again).
    """
    return FeatureLoader(store, views, split, batch_size, shuffle, seed, with_stages, cache)
