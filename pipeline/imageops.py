"""Frame geometry and JPEG: resize to a short side, rotate upright, centre crop, encode.

The PyAV path scales with swscale inside `VideoFrame.reformat`, which converts YUV to RGB and
resizes in one pass (cheaper than converting at full size and resizing after). The DALI path
gets full-size RGB arrays and resizes them with Pillow. Both use the same output size rule.
"""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

from pipeline.types import FrameFormat


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side set to `short_side`, aspect kept, both even.

    Every video is brought to the same short side (up or down) so shards have uniform geometry.
    """
    if short_side < 2:
        raise ValueError(f"short_side must be >= 2, got {short_side}")
    scale = short_side / min(width, height)
    even = short_side - short_side % 2
    new_w = even if width <= height else max(2, round(width * scale / 2) * 2)
    new_h = even if height < width else max(2, round(height * scale / 2) * 2)
    return new_w, new_h


def rotate_upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a clockwise display rotation (0/90/180/270) to an H×W×3 array."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=-turns)) if turns else rgb


def center_crop(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """Square centre crop of side `size` (no-op for None); `size` must fit the frame."""
    if size is None:
        return rgb
    h, w = rgb.shape[:2]
    if size > min(h, w):
        raise ValueError(f"center_crop {size} is larger than the resized frame {w}x{h}")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def frame_to_rgb(frame: av.VideoFrame, fmt: FrameFormat, rotation: int) -> np.ndarray:
    """Decoded PyAV frame -> upright, resized, cropped RGB uint8 array (one swscale pass)."""
    upright_w, upright_h = (
        (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
    )
    out_w, out_h = output_size(upright_w, upright_h, fmt.short_side)
    if rotation in (90, 270):
        out_w, out_h = out_h, out_w
    rgb = frame.reformat(width=out_w, height=out_h, format="rgb24", interpolation="AREA")
    return center_crop(rotate_upright(rgb.to_ndarray(), rotation), fmt.center_crop)


def array_to_rgb(rgb: np.ndarray, fmt: FrameFormat, rotation: int) -> np.ndarray:
    """Full-size RGB array (e.g. from DALI) -> upright, resized, cropped RGB uint8 array."""
    upright = rotate_upright(rgb, rotation)
    h, w = upright.shape[:2]
    size = output_size(w, h, fmt.short_side)
    if size != (w, h):
        upright = np.asarray(Image.fromarray(upright).resize(size, Image.Resampling.BOX))
    return center_crop(upright, fmt.center_crop)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes at the stated Pillow quality (recorded with the frames that use it)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
