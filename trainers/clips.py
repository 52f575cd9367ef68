"""Clip batches for end-to-end training, read straight from the WebDataset shards.

Small stages, each testable alone: `frame_indices` picks T of a video's N stored frames BEFORE
anything is decoded (TSN segment sampling in training, segment centres in evaluation,
a contiguous window for 3D backbones), `decode_picked` decodes only those JPEGs,
`train_clip` / `eval_clip` turn them into network input, and `ClipLoader` batches them.

Training augmentation is TSN's (also AR-Net's and MMAction2's): one multi-scale crop
(side = short side x one of 1, .875, .75, .66 per axis, at most one scale step apart) at a
random position plus a random horizontal flip, drawn once per clip and applied to every frame,
then resized to each view's input size. Evaluation uses the store's own preprocessing
(`pipeline.preprocess`: short side to S/0.875, centre crop S) so an encoder in eval mode sees
exactly what extraction fed the backbone.

Distribution: shards are split by rank with `webdataset.split_by_node` (and by DataLoader
worker with `split_by_worker`); every rank draws the same number of clips per epoch
(`steps_per_epoch` x batch size, cycling over its own shards), so every rank runs the same
number of steps and DDP cannot hang on a rank that ran out of data.
"""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from pipeline.imageops import decode_jpeg
from pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames, view_preprocess

#: TSN's multi-scale crop scales (fractions of the short side)
CROP_SCALES = (1.0, 0.875, 0.75, 0.66)
SHARD_GLOB = "shard-*.tar"


@dataclass(frozen=True)
class ClipSpec:
    """How clips are made: T frames, one tensor per input size, training augmentation or the
    store's evaluation crop, and segment (2D) or contiguous (3D backbones) sampling."""

    frames: int
    sizes: tuple[int, ...]
    train: bool
    contiguous: bool = False
    flip: bool = True
    scales: tuple[float, ...] = CROP_SCALES

    def __post_init__(self) -> None:
        if self.frames < 1 or not self.sizes:
            raise ValueError(f"need frames >= 1 and one or more sizes, got {self}")


@dataclass(frozen=True)
class VideoEntry:
    """One video of a shard, from its json member alone (no frames read)."""

    shard: str
    key: str
    video_id: str
    split: str
    labels: tuple[str, ...]
    num_frames: int


@dataclass
class ClipBatch:
    """clips: {input size: float32 [B, T, 3, S, S]}; targets: multi-hot [B, C]."""

    clips: dict[int, torch.Tensor]
    targets: torch.Tensor
    video_ids: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ClipBatch:
        """The same clips on `device`, as `Batch.to` (so `trainers.evaluation.evaluating`
        walks a clip loader like a feature loader)."""
        return ClipBatch({s: x.to(device, non_blocking=non_blocking)
                          for s, x in self.clips.items()},
                         self.targets.to(device, non_blocking=non_blocking), self.video_ids)


def shard_urls(shards: str | Path) -> list[str]:
    """The `shard-*.tar` files of a shard folder, in name order."""
    urls = sorted(str(p) for p in Path(shards).glob(SHARD_GLOB))
    if not urls:
        raise FileNotFoundError(f"no {SHARD_GLOB} in {shards}")
    return urls


def scan_shards(urls: Sequence[str]) -> list[VideoEntry]:
    """Every video's id, split, labels and frame count, reading only the json members (the
    tar is seekable, so frames are skipped, not read)."""
    entries = []
    for url in urls:
        with tarfile.open(url, mode="r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    entries.append(VideoEntry(url, meta["key"], meta["video_id"],
                                              meta.get("split", ""), tuple(meta["labels"]),
                                              int(meta["num_frames"])))
    return entries


def frame_indices(n: int, t: int, train: bool, rng: random.Random,
                  contiguous: bool = False) -> list[int]:
    """T frame numbers out of N (N < T repeats frames, keeping time order).

    Segments (TSN): split [0, N) into T equal segments, take a random frame of each in
    training and its centre in evaluation. Contiguous: T consecutive frames starting at a
    random (training) or centred (evaluation) position, looping a video shorter than T.
    """
    if n < 1:
        raise ValueError("a video with no frames has no clip")
    if contiguous:
        start = rng.randrange(max(1, n - t + 1)) if train else max(0, (n - t) // 2)
        return [(start + i) % n for i in range(t)]
    seg = n / t
    if train:
        return [min(n - 1, int(seg * i + rng.random() * seg)) for i in range(t)]
    return [min(n - 1, int(seg * i + seg / 2)) for i in range(t)]


def decode_picked(sample: dict, indices: Sequence[int]) -> list[np.ndarray]:
    """RGB arrays of the picked frames of a raw webdataset sample (the others stay bytes)."""
    by_number = {int(k.split(".")[0]): k for k in sample if k.endswith(".jpg")}
    cache: dict[int, np.ndarray] = {}
    for i in indices:
        if i not in cache:
            cache[i] = decode_jpeg(sample[by_number[i]])
    return [cache[i] for i in indices]


def crop_box(height: int, width: int, scales: Sequence[float],
             rng: random.Random) -> tuple[int, int, int, int]:
    """TSN multi-scale crop (top, left, h, w): side lengths from the short side x scales,
    the two axes at most one scale apart, placed uniformly at random."""
    base = min(height, width)
    pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales)) if abs(i - j) <= 1]
    i, j = pairs[rng.randrange(len(pairs))]
    ch, cw = max(1, int(base * scales[i])), max(1, int(base * scales[j]))
    return rng.randint(0, height - ch), rng.randint(0, width - cw), ch, cw


def _normalise(batch: np.ndarray) -> torch.Tensor:
    x = batch.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def draw_augment(height: int, width: int, spec: ClipSpec,
                 rng: random.Random) -> tuple[tuple[int, int, int, int], bool]:
    """The clip's crop box and flip, drawn in one fixed order so the PIL and DALI paths given
    the same seed make the same clip."""
    box = crop_box(height, width, spec.scales, rng)
    return box, bool(spec.flip and rng.random() < 0.5)


def train_clip(frames: Sequence[np.ndarray], spec: ClipSpec,
               rng: random.Random) -> dict[int, torch.Tensor]:
    """One crop box and one flip for the whole clip, resized to each size: {S: [T, 3, S, S]}."""
    h, w = frames[0].shape[:2]
    (top, left, ch, cw), flip = draw_augment(h, w, spec, rng)
    crops = [Image.fromarray(f[top:top + ch, left:left + cw]) for f in frames]
    if flip:
        crops = [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]
    return {s: _normalise(np.stack([np.asarray(c.resize((s, s), Image.BILINEAR))
                                    for c in crops])) for s in spec.sizes}


def eval_clip(frames: Sequence[np.ndarray], spec: ClipSpec) -> dict[int, torch.Tensor]:
    """The store's preprocessing (short side S/0.875, centre crop S) per size: {S: [T,3,S,S]}."""
    return {s: torch.from_numpy(preprocess_frames(list(frames), view_preprocess(s)))
            for s in spec.sizes}


def make_clip(sample: dict, spec: ClipSpec, rng: random.Random) -> tuple[dict, dict]:
    """(meta, {S: [T, 3, S, S]}) of one raw sample, decoding only the T picked JPEGs."""
    meta = json.loads(sample["json"])
    idx = frame_indices(int(meta["num_frames"]), spec.frames, spec.train, rng, spec.contiguous)
    frames = decode_picked(sample, idx)
    return meta, (train_clip(frames, spec, rng) if spec.train else eval_clip(frames, spec))


@dataclass(frozen=True)
class RawClip:
    """A clip not yet decoded: its picked JPEGs and (training) the crop box and flip drawn for
    it, for a decoder that runs outside the loader (trainers/clips_dali.py)."""

    jpegs: tuple[bytes, ...]
    box: tuple[int, int, int, int] | None
    flip: bool


@dataclass
class RawClipBatch:
    """clips: one RawClip per video; targets: multi-hot [B, C]."""

    clips: list[RawClip]
    targets: torch.Tensor
    video_ids: list[str]


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(height, width) of a JPEG from its header alone (no pixels decoded)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.height, image.width


def make_raw_clip(sample: dict, spec: ClipSpec, rng: random.Random) -> tuple[dict, RawClip]:
    """(meta, RawClip) of one raw sample: the same frames, crop and flip as `make_clip` draws
    with the same rng, but the JPEGs stay bytes."""
    meta = json.loads(sample["json"])
    idx = frame_indices(int(meta["num_frames"]), spec.frames, spec.train, rng, spec.contiguous)
    by_number = {int(k.split(".")[0]): k for k in sample if k.endswith(".jpg")}
    jpegs = tuple(sample[by_number[i]] for i in idx)
    if not spec.train:
        return meta, RawClip(jpegs, None, False)
    box, flip = draw_augment(*jpeg_size(jpegs[0]), spec, rng)
    return meta, RawClip(jpegs, box, flip)


def _targets(metas: Sequence[dict], class_index: dict[str, int]) -> torch.Tensor:
    targets = torch.zeros(len(metas), len(class_index))
    for i, meta in enumerate(metas):
        targets[i, [class_index[c] for c in meta["labels"]]] = 1.0
    return targets


def collate_clips(items: list[tuple[dict, dict]], class_index: dict[str, int]) -> ClipBatch:
    clips = {s: torch.stack([c[s] for _, c in items]) for s in items[0][1]}
    return ClipBatch(clips, _targets([m for m, _ in items], class_index),
                     [meta["video_id"] for meta, _ in items])


def collate_raw(items: list[tuple[dict, RawClip]], class_index: dict[str, int]) -> RawClipBatch:
    return RawClipBatch([c for _, c in items], _targets([m for m, _ in items], class_index),
                        [meta["video_id"] for meta, _ in items])


class ClipLoader:
    """Batches of clips of one split.

    Training (`spec.train`): this rank's shards (webdataset.split_by_node), shuffled per
    epoch with a buffer seeded by (seed, epoch, rank), cycled until exactly `steps_per_epoch`
    batches of `batch_size` were drawn. Evaluation: every video of the split once, in shard
    order, the last batch smaller (evaluation runs on one rank).
    """

    def __init__(
        self,
        urls: Sequence[str],
        spec: ClipSpec,
        classes: Sequence[str],
        split: str,
        batch_size: int,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 64,
        raw: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if spec.train and (steps_per_epoch is None or steps_per_epoch < 1):
            raise ValueError("a training loader needs steps_per_epoch >= 1")
        self.urls = list(urls)
        self.spec = spec
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.split = split
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.raw = raw
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.spec.train:
            return int(self.steps_per_epoch)
        n = sum(1 for e in scan_shards(self.urls) if e.split == self.split)
        return math.ceil(n / self.batch_size)

    def _samples(self) -> Iterator[dict]:
        """Raw samples of the split: this rank's shards in training, all of them otherwise."""
        dataset = wds.WebDataset(self.urls, shardshuffle=False,
                                 nodesplitter=wds.split_by_node if self.spec.train else None,
                                 workersplitter=wds.split_by_worker, empty_check=False)
        for sample in dataset:
            if json.loads(sample["json"]).get("split") == self.split:
                yield sample

    def _train_samples(self, rng: random.Random) -> Iterator[dict]:
        """This rank's samples, buffer-shuffled, pass after pass (never ends)."""
        buffer: list[dict] = []
        while True:
            got = 0
            for sample in self._samples():
                got += 1
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            if not got:
                raise ValueError(f"this rank's shards hold no {self.split!r} videos: use "
                                 "fewer workers or more, smaller shards (--videos-per-shard)")
            rng.shuffle(buffer)
            while len(buffer) > self.shuffle_buffer // 2:
                yield buffer.pop()

    def __iter__(self) -> Iterator[ClipBatch | RawClipBatch]:
        make, collate = (make_raw_clip, collate_raw) if self.raw else (make_clip, collate_clips)
        rank = wds.utils.pytorch_worker_info()[0]
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}")
        self.epoch += 1
        if not self.spec.train:
            items = []
            for sample in self._samples():
                items.append(make(sample, self.spec, rng))
                if len(items) == self.batch_size:
                    yield collate(items, self.class_index)
                    items = []
            if items:
                yield collate(items, self.class_index)
            return
        samples = self._train_samples(rng)
        for _ in range(self.steps_per_epoch):
            items = [make(next(samples), self.spec, rng) for _ in range(self.batch_size)]
            yield collate(items, self.class_index)
