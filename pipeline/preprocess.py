"""Per-view preprocessing of stored frames into network input, ImageNet evaluation style.

A view of size S resizes the frame's short side to round(S / 0.875) (256 for 224, 128 for 112:
the ratio torchvision's ImageNet evaluation uses), centre-crops S x S, scales to [0, 1] and
normalises with the ImageNet mean/std. The same function serves extraction and the tests that
check extracted features, and `attrs()` is what the feature store records, so the preprocessing
of every stored feature is written next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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

    def attrs(self) -> dict:
        return {
            "resize_short_side": self.resize_short_side,
            "center_crop": self.input_size,
            "interpolation": "bilinear (Pillow, antialiased when shrinking)",
            "mean": list(self.mean),
            "std": list(self.std),
            "value_range": "RGB uint8 / 255 before normalising",
        }


def view_preprocess(input_size: int) -> ViewPreprocess:
    """The preprocessing a view of `input_size` uses (short side = round(size / 0.875))."""
    if input_size < 8:
        raise ValueError(f"input_size must be >= 8, got {input_size}")
    return ViewPreprocess(input_size, round(input_size / EVAL_CROP_RATIO))


def resize_crop(rgb: np.ndarray, pp: ViewPreprocess) -> np.ndarray:
    """H x W x 3 uint8 -> S x S x 3 uint8: short side to `resize_short_side`, centre crop."""
    h, w = rgb.shape[:2]
    scale = pp.resize_short_side / min(h, w)
    new_w, new_h = max(pp.input_size, round(w * scale)), max(pp.input_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    top = round((new_h - pp.input_size) / 2.0)
    left = round((new_w - pp.input_size) / 2.0)
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
