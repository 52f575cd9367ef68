"""Clip batches decoded by DALI and augmented with torch ops on the training device.

`--jpeg-decoder dali` (see `resolve_clip_decoder`): the `ClipLoader` runs with `raw=True`, so it
picks frames and draws each clip's crop box and flip exactly as the PIL path does (same seed,
same clip) but yields the picked JPEG bytes. `DaliClipLoader` then decodes a whole batch's
JPEGs in one DALI call in the main process ('mixed' = nvJPEG on CUDA, the frames land in GPU
memory; 'cpu' = DALI's libjpeg-turbo decoder), and crop, flip, resize and normalise run as
torch ops where the frames are. The DALI pipeline is built in the main process only: it is
never forked into DataLoader workers.

Matching the PIL path: Pillow's bilinear resize widens its filter when shrinking, which is
torch's `interpolate(..., antialias=True)`; Pillow rounds to uint8 before normalising, so the
resized frames are rounded too. Evaluation reuses `pipeline.preprocess.preprocess_tensors`, the
torch twin of the store's preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from pipeline.jpeg_dali import dali_jpeg_decoder, resolve_jpeg_decoder
from pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_tensors, view_preprocess
from trainers.clips import ClipBatch, ClipLoader, ClipSpec, RawClip

CLIP_DECODERS = ("pil", "dali", "auto")


def resolve_clip_decoder(choice: str, device: str | torch.device) -> str:
    """--jpeg-decoder of `c2f finetune` -> 'pil' or 'dali'. auto = dali when nvidia-dali is
    importable and the run is on CUDA (decoding then frees the CPU cores feeding the GPU),
    else pil (on CPU, DALI's decoder plus torch ops ran slower than Pillow:
    `pipeline.jpeg_dali.resolve_jpeg_decoder`)."""
    if choice not in CLIP_DECODERS:
        raise ValueError(f"jpeg decoder must be one of {CLIP_DECODERS}, got {choice!r}")
    if choice == "pil":
        return "pil"
    kind = torch.device(device).type
    resolved = resolve_jpeg_decoder("dali" if choice == "dali" else "auto",
                                    "cuda" if kind == "cuda" else "cpu")
    return "pil" if resolved == "pillow" else "dali"


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8-valued float [N, 3, S, S] -> ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).contiguous()


def train_clip_tensors(frames: Sequence[torch.Tensor], clip: RawClip,
                       sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    """The clip's crop box and flip on H x W x 3 uint8 frames, resized to each size (bilinear,
    antialiased, rounded to uint8 like Pillow): {S: [T, 3, S, S]} on the frames' device."""
    top, left, ch, cw = clip.box
    x = torch.stack(list(frames))[:, top:top + ch, left:left + cw].permute(0, 3, 1, 2).float()
    if clip.flip:
        x = x.flip(-1)
    out = {}
    for s in sizes:
        y = x if (ch, cw) == (s, s) else F.interpolate(
            x, size=(s, s), mode="bilinear", antialias=True, align_corners=False
        ).round_().clamp_(0, 255)
        out[s] = _normalise(y)
    return out


def eval_clip_tensors(frames: Sequence[torch.Tensor],
                      sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    """The store's evaluation preprocessing per size, as torch ops: {S: [T, 3, S, S]}."""
    return {s: preprocess_tensors(list(frames), view_preprocess(s)) for s in sizes}


class DaliClipLoader:
    """A `ClipLoader` whose JPEGs DALI decodes in this process, one call per batch.

    Same length, epochs and steps per rank as the loader it wraps (it is that loader with
    `raw=True`); clips come out on `device` ('mixed' decoding on CUDA, 'cpu' otherwise).
    """

    def __init__(self, loader: ClipLoader, device: str | torch.device,
                 threads: int = 1) -> None:
        if not loader.raw:
            raise ValueError("DaliClipLoader needs a ClipLoader made with raw=True")
        self.loader = loader
        self.spec: ClipSpec = loader.spec
        self.device = torch.device(device)
        self.dali_device = "mixed" if self.device.type == "cuda" else "cpu"
        self.threads = threads

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ClipBatch]:
        t = self.spec.frames
        if self.device.type == "cuda":  # nvJPEG decodes onto this run's GPU
            torch.cuda.set_device(self.device)
        decoder = dali_jpeg_decoder(self.dali_device, self.loader.batch_size * t, self.threads)
        for raw in self.loader:
            frames = decoder.decode([j for c in raw.clips for j in c.jpegs])
            frames = [f.to(self.device, non_blocking=True) for f in frames]
            per_clip = [frames[i * t:(i + 1) * t] for i in range(len(raw.clips))]
            made = [train_clip_tensors(f, c, self.spec.sizes) if self.spec.train
                    else eval_clip_tensors(f, self.spec.sizes)
                    for f, c in zip(per_clip, raw.clips)]
            clips = {s: torch.stack([m[s] for m in made]) for s in self.spec.sizes}
            yield ClipBatch(clips, raw.targets.to(self.device), raw.video_ids)


def clip_loader(urls: Sequence[str], spec: ClipSpec, classes: Sequence[str], split: str,
                batch_size: int, steps_per_epoch: int | None = None, seed: int = 0, *,
                decoder: str = "pil",
                device: str | torch.device = "cpu") -> ClipLoader | DaliClipLoader:
    """The loader a run uses: PIL decoding in the loader, or DALI after it (`decoder` is a
    resolved 'pil' or 'dali')."""
    if decoder not in ("pil", "dali"):
        raise ValueError(f"decoder must be resolved to 'pil' or 'dali', got {decoder!r}")
    loader = ClipLoader(urls, spec, classes, split, batch_size, steps_per_epoch, seed,
                        raw=decoder == "dali")
    return DaliClipLoader(loader, device) if decoder == "dali" else loader
