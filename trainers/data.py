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
from trainers.prefetch import background

log = logging.getLogger(__name__)

DEFAULT_PREFETCH = 2  # batches read ahead; two hide one slow read behind a step
DEFAULT_BLOCK = 4  # videos of one part read together when shuffling


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
    """A re-iterable of padded `Batch`es over one split of a store (features as stored,
    float16; `Batch.to(device)` casts them to float32).

    Shuffling is seeded by (seed, epoch): the loop calls `set_epoch` before each epoch so that
    a resumed run sees exactly the batches an uninterrupted run would. Without `set_epoch`, each
    new iteration advances the epoch by one. The shuffle keeps reads local (`block_shuffle`):
    blocks of `block` videos of one part, blocks in random order. `prefetch` > 0 reads and pads
    that many batches ahead in a background thread; the batches are the same as without it.
    `cache=True` keeps each video's float16 features in memory after its first read (for
    stores that fit in RAM; `trainers.cache_policy` decides it for a run).
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
        cache: bool = False,
        prefetch: int = DEFAULT_PREFETCH,
        block: int = DEFAULT_BLOCK,
    ) -> None:
        missing = [v for v in views if v not in store.views]
        if missing:
            raise ValueError(f"store has no view {missing[0]!r} (has {list(store.views)})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 0 or block < 1:
            raise ValueError(f"need prefetch >= 0 and block >= 1, got {prefetch} and {block}")
        self.store = store
        self.views = list(views)
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.with_stages = with_stages
        self.cache = cache
        self.prefetch = prefetch
        self.block = block
        self.video_ids = list(store.video_ids(split))
        self._parts = [store.part_of(v) for v in self.video_ids]
        self.class_index = {c: i for i, c in enumerate(store.classes)}
        self.epoch = 0
        self._cache: dict[str, tuple] = {}

    def __len__(self) -> int:
        return (len(self.video_ids) + self.batch_size - 1) // self.batch_size

    def select(self, video_ids: Sequence[str]) -> FeatureLoader:
        """Read only `video_ids` (in this order; e.g. a validation split carved from train)."""
        self.video_ids = list(video_ids)
        self._parts = [self.store.part_of(v) for v in self.video_ids]
        self._cache = {v: item for v, item in self._cache.items() if v in set(self.video_ids)}
        return self

    def set_epoch(self, epoch: int) -> None:
        """Fix the shuffle order of the next iteration to the one of `epoch`."""
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        """Indices into `video_ids` in the order epoch `epoch` reads them."""
        if not self.shuffle:
            return np.arange(len(self.video_ids))
        return block_shuffle(self._parts, self.block, np.random.default_rng([self.seed, epoch]))

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

    def _reads(self, order: np.ndarray) -> Iterator[tuple[list[tuple], list[str]]]:
        for start in range(0, len(order), self.batch_size):
            ids = [self.video_ids[i] for i in order[start : start + self.batch_size]]
            yield [self._read(v) for v in ids], ids

    def _collated(self, reads: Iterator[tuple[list[tuple], list[str]]]) -> Iterator[Batch]:
        for items, ids in reads:
            yield collate(items, ids, len(self.class_index))

    def __iter__(self) -> Iterator[Batch]:
        order = self.order(self.epoch)
        self.epoch += 1
        if not self.prefetch:
            return self._collated(self._reads(order))
        # Two stages, so that reading a batch (h5py holds the GIL) overlaps with padding the
        # previous one (torch's copy releases it) as well as with the training step.
        reads = background(self._reads(order), self.prefetch, name="feature-read")
        return background(self._collated(reads), self.prefetch, name="feature-collate")


def block_shuffle(parts: Sequence[str], block: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(len(parts)) that reads `block` videos of one part together.

    The videos of each part are shuffled and cut into blocks of `block`; the blocks of all parts
    are then shuffled. A batch thus touches about batch_size / block parts instead of
    batch_size, which keeps reads sequential within a part file (and its pages cached).
    block=1 is a plain uniform shuffle.
    """
    by_part: dict[str, list[int]] = {}
    for i, part in enumerate(parts):
        by_part.setdefault(part, []).append(i)
    blocks = []
    for part in sorted(by_part):
        members = rng.permutation(np.asarray(by_part[part], dtype=np.int64))
        blocks.extend(members[k : k + block] for k in range(0, len(members), block))
    if not blocks:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


def collate(items: list[tuple], video_ids: list[str], num_classes: int) -> Batch:
    """Pad per-video arrays to the longest video of the batch (zeros past each length).

    Features and stages keep the stored dtype (float16): a plain copy here, the cast to float32
    in `Batch.to(device)` (on an accelerator after a half-size transfer). Converting here took
    most of the loader's time (benchmarks/README.md, "Loader").
    """
    lengths = [len(next(iter(feats.values()))) for feats, _, _ in items]
    b, t = len(items), max(lengths)

    def pad(arrays: list[np.ndarray]) -> torch.Tensor:
        first = torch.from_numpy(arrays[0])
        out = torch.empty((b, t, first.shape[-1]), dtype=first.dtype)  # only padding is zeroed
        for i, a in enumerate(arrays):
            out[i, : len(a)].copy_(torch.from_numpy(a))
            out[i, len(a) :].zero_()
        return out

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
    cache: bool = False,
    prefetch: int = DEFAULT_PREFETCH,
    block: int = DEFAULT_BLOCK,
) -> FeatureLoader:
    """Padded batches of `views` (and their stage features) from one split.

    Features come as stored (float16); `Batch.to(device)` makes them float32 on the device, so
    every consumer calls it before feeding a model.

    cache: keep each video's float16 features in memory after its first read (for stores that
    fit in RAM; `trainers.cache_policy.choose_cache` decides it for a training run).
    prefetch: batches read ahead in a background thread (0: read in the caller).
    block: videos of one part read together when shuffling (see `block_shuffle`).
    """
    return FeatureLoader(store, views, split, batch_size, shuffle, seed, with_stages, cache,
                         prefetch, block)
