"""Per-view preprocessing of stored frames into network input, ImageNet evaluation style.

A view of size S resizes the frame's short side to round(S / 0.875) (256 for 224, 128 for 112:
the ratio torchvision's ImageNet evaluation uses), centre-crops S x S, scales to [0, 1] and
normalises with the ImageNet mean/std. The same function serves extraction and the tests that
check extracted features, and `attrs()` is what the feature store records, so the preprocessing
of every stored feature is written next to it.

Two implementations of the same steps: `preprocess_frames` (numpy arrays, Pillow resize; the
CPU default) and `preprocess_tensors` (torch uint8 images on any device, e.g. decoded by DALI
straight into GPU memory). They share the size and crop rule; the resampling filter is
bilinear with antialiasing in both (torch's antialiased bilinear reproduces Pillow's filter;
the result is rounded to uint8 as Pillow's is), so the two agree to within one grey level per
pixel before normalising (measured in tests/test_jpeg_dali.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_RATIO = 0.875


@dataclass(frozen=True)
class ViewPreprocess:
    """Resize short side, centre crop, normalise: everything between a frame and the network."""

    input_size: int
    resize_short_side: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def attrs(self, jpeg_decoder: str = "pillow") -> dict:
        """What the store records; `jpeg_decoder` is pillow, dali-cpu or dali-mixed."""
        interpolation = (
            "bilinear (Pillow, antialiased when shrinking)"
            if jpeg_decoder == "pillow"
            else "bilinear (torch interpolate, antialias=True: Pillow's filter; rounded to uint8)"
        )
        return {
            "jpeg_decoder": jpeg_decoder,
            "resize_short_side": self.resize_short_side,
            "center_crop": self.input_size,
            "interpolation": interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "value_range": "RGB uint8 / 255 before normalising",
        }


def view_preprocess(input_size: int) -> ViewPreprocess:
    """The preprocessing a view of `input_size` uses (short side = round(size / 0.875))."""
    if input_size < 8:
        raise ValueError(f"input_size must be >= 8, got {input_size}")
    return ViewPreprocess(input_size, round(input_size / EVAL_CROP_RATIO))


def resized_size(height: int, width: int, pp: ViewPreprocess) -> tuple[int, int]:
    """(height, width) after setting the short side to `resize_short_side` (never below S)."""
    scale = pp.resize_short_side / min(height, width)
    return max(pp.input_size, round(height * scale)), max(pp.input_size, round(width * scale))


def crop_origin(height: int, width: int, pp: ViewPreprocess) -> tuple[int, int]:
    """(top, left) of the centre S x S crop of a resized frame."""
    return round((height - pp.input_size) / 2.0), round((width - pp.input_size) / 2.0)


def resize_crop(rgb: np.ndarray, pp: ViewPreprocess) -> np.ndarray:
    """H x W x 3 uint8 -> S x S x 3 uint8: short side to `resize_short_side`, centre crop."""
    h, w = rgb.shape[:2]
    new_h, new_w = resized_size(h, w, pp)
    if (new_h, new_w) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    top, left = crop_origin(new_h, new_w, pp)
    return rgb[top : top + pp.input_size, left : left + pp.input_size]


def preprocess_frames(frames: Sequence[np.ndarray], pp: ViewPreprocess) -> np.ndarray:
    """RGB uint8 frames -> normalised float32 batch [N, 3, S, S] ready for the backbone."""
    if not frames:
        return np.empty((0, 3, pp.input_size, pp.input_size), dtype=np.float32)
    batch = np.stack([resize_crop(f, pp) for f in frames]).astype(np.float32) / 255.0
    mean = np.asarray(pp.mean, dtype=np.float32)
    std = np.asarray(pp.std, dtype=np.float32)
    batch = (batch - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def preprocess_tensors(images: Sequence[torch.Tensor], pp: ViewPreprocess) -> torch.Tensor:
    """RGB uint8 H x W x 3 tensors -> normalised float32 [N, 3, S, S] on the images' device.

    The torch twin of `preprocess_frames` for frames that are already tensors (DALI decodes
    into GPU memory; a trip through numpy and Pillow would cost two host copies). Runs of
    images of one size (all frames of a video) are resized in one call.
    """
    if not images:
        return torch.empty((0, 3, pp.input_size, pp.input_size), dtype=torch.float32)
    crops = []
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and images[end].shape == images[start].shape:
            end += 1
        x = torch.stack(list(images[start:end])).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        new_h, new_w = resized_size(h, w, pp)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(
                x.float(),
                size=(new_h, new_w),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            x = x.round_().clamp_(0, 255)
        top, left = crop_origin(new_h, new_w, pp)
        # Crop before converting to float: no work on pixels the crop drops.
        crops.append(x[:, :, top : top + pp.input_size, left : left + pp.input_size].float())
        start = end
    batch = torch.cat(crops) / 255.0
    mean = torch.tensor(pp.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous()
