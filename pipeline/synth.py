"""A small labelled set of untrimmed videos for demos and tests (`c2f synth`).

Why it looks the way it does: the methods in this project bet that (1) most of an untrimmed
video is background, so a cheap look at a few frames can decide where to spend effort, and
(2) some classes are told apart only by detail that a low-resolution view cannot see. The data
is built so both bets can be checked:

* Background. Every frame shows clutter: a smooth colour field (random low-frequency colours,
  bilinearly upsampled) that drifts sideways, plus three plain distractor shapes in muted
  colours that wander around. Distractors never carry stripes and never use a class colour.
* Evidence segments. A video's class appears only inside 1-2 segments of 1.5-4 s (together
  at most ~40 % of the video). In a segment a class object glides in a straight line across
  the frame; outside segments there is only clutter. The segments of every video are written
  to `synth.json` as ground truth (`segments`: class, start and end in seconds, object size and
  the top-left corners it glides between; see `object_position`).
* Coarse vs fine. Classes come in pairs. Both members of pair p share the coarse appearance:
  shape (disc / square / diamond, by p) and colour (a saturated palette colour, by p). They
  differ only in a zero-mean luminance texture over the object: one-pixel stripes (period 2 px,
  ±50 levels), horizontal for the even class, vertical for the odd one. At 320x240 and after
  resizing to 256 or 224 px short side the stripes are resolved; after an anti-aliased resize to
  112 px short side their period (2 × 112/240 ≈ 0.9 px) is far below the 2 px Nyquist limit, so
  both orientations blur into the same flat colour and the pair can no longer be told apart
  (measured through H.264, VP9 and MJPEG and a Pillow bilinear resize: mean |d/dy| - |d/dx| over
  the object is about ±35 levels at 256 px and under ±1 level at 128 px). This holds for the
  default 320x240 frames; much smaller frames (as in quick tests) lose the property.
* Codecs rotate across videos: H.264 (.mp4), VP9 (.webm), MJPEG (.avi) by default.
* Labels. Video i has primary class i mod C. With `multi_label_fraction` > 0, that fraction of
  videos also shows a second class (from another pair when there is one) in its own segment and
  carries both labels. Splits cycle train, val, test, train, train, train over each class's
  videos, so every split sees every class once a class has 3 videos.

Everything is drawn from numpy generators seeded by (seed, video index), so a seed gives the same
frames and the same manifest; MP4 and AVI file bytes are identical too (WebM files differ in
the random segment UID the muxer writes, not in their frames).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.synth_config import SynthConfig  # defined apart so `c2f synth --help` is light

log = logging.getLogger(__name__)

PALETTE = (  # saturated class colours, one per pair
    (220, 40, 40),
    (40, 90, 230),
    (40, 190, 60),
    (235, 200, 30),
    (200, 50, 210),
    (30, 200, 210),
)
PALETTE_NAMES = ("red", "blue", "green", "yellow", "magenta", "cyan")
SHAPES = ("disc", "square", "diamond")
MUTED = ((120, 110, 100), (90, 100, 110), (140, 130, 120), (100, 90, 80), (110, 120, 110))
STRIPE_PERIOD = 2
STRIPE_AMPLITUDE = 50
SPLIT_CYCLE = ("train", "val", "test", "train", "train", "train")


@dataclass
class SynthVideo:
    """Ground truth for one generated video."""

    video_id: str
    path: str
    codec: str
    labels: list[str]
    split: str
    duration: float
    frames: int
    segments: list[dict] = field(default_factory=list)


def class_name(c: int) -> str:
    """E.g. `red-disc-h` / `red-disc-v`: pair colour, pair shape, stripe orientation."""
    pair = c // 2
    colour = PALETTE_NAMES[pair % len(PALETTE)]
    shape = SHAPES[pair % len(SHAPES)]
    suffix = "" if pair < len(PALETTE) else f"{pair // len(PALETTE)}"
    return f"{colour}-{shape}{suffix}-{'hv'[c % 2]}"


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    if shape == "disc":
        return (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
    if shape == "diamond":
        return np.abs(yy - c) + np.abs(xx - c) <= size / 2
    return np.ones((size, size), dtype=bool)


def class_sprite(c: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask HxW bool, texture HxWx3 uint8) of class c's object: pair colour and shape, with
    stripes of period STRIPE_PERIOD whose orientation encodes the class within its pair."""
    pair = c // 2
    base = np.array(PALETTE[pair % len(PALETTE)], dtype=np.int16)
    mask = _shape_mask(SHAPES[pair % len(SHAPES)], size)
    coord = np.arange(size)
    phase = np.round(STRIPE_AMPLITUDE * np.cos(2 * np.pi * coord / STRIPE_PERIOD)).astype(np.int16)
    wave = phase[:, None] if c % 2 == 0 else phase[None, :]
    texture = base[None, None, :] + np.broadcast_to(wave, (size, size))[..., None]
    return mask, np.clip(texture, 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, mask: np.ndarray, tex: np.ndarray, x: int, y: int) -> None:
    h, w = mask.shape
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x0 >= x1 or y0 >= y1:
        return
    m = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    region = frame[y0:y1, x0:x1]
    region[m] = tex[y0 - y : y1 - y, x0 - x : x1 - x][m]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth random colour field, twice the frame width and periodic, so it can drift and wrap."""
    grid = rng.uniform(60, 180, size=(4, 9, 3))
    grid[:, -1] = grid[:, 0]  # periodic, so the wrap-around of the drift shows no seam
    gy = np.linspace(0, grid.shape[0] - 1, height)
    gx = np.linspace(0, grid.shape[1] - 1, 2 * width)
    y0 = np.floor(gy).astype(int).clip(0, grid.shape[0] - 2)
    x0 = np.floor(gx).astype(int).clip(0, grid.shape[1] - 2)
    fy = (gy - y0)[:, None, None]
    fx = (gx - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bot = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.uint8)


def _segments(
    rng: np.random.Generator, duration: float, classes: list[int], width: int, height: int
) -> list[dict]:
    """Non-overlapping evidence segments (1-2 for the primary class, 1 for a second class), each
    with the object's size and the top-left corners it glides between."""
    counts = [int(rng.integers(1, 3))] + [1] * (len(classes) - 1)
    wanted = [cls for cls, n in zip(classes, counts) for _ in range(n)]
    budget = 0.4 * duration / len(wanted)
    slot = duration / len(wanted)
    segs = []
    for k, cls in enumerate(wanted):
        length = min(float(rng.uniform(1.5, 4.0)), max(budget, 0.5), slot)
        start = k * slot + float(rng.uniform(0, slot - length))
        size = int(rng.integers(int(height * 0.28), int(height * 0.36)))
        a = rng.integers(0, [width - size, height - size])
        b = rng.integers(0, [width - size, height - size])
        segs.append(
            {
                "class": class_name(cls),
                "class_index": cls,
                "start": round(start, 3),
                "end": round(start + length, 3),
                "size": size,
                "from_xy": [int(a[0]), int(a[1])],
                "to_xy": [int(b[0]), int(b[1])],
            }
        )
    return segs


def object_position(seg: dict, t: float) -> tuple[int, int]:
    """Top-left corner of a segment's object at time t (linear glide from from_xy to to_xy)."""
    u = (t - seg["start"]) / max(seg["end"] - seg["start"], 1e-6)
    a, b = seg["from_xy"], seg["to_xy"]
    return int(a[0] + (b[0] - a[0]) * u), int(a[1] + (b[1] - a[1]) * u)


def render_frames(
    cfg: SynthConfig, index: int, classes: list[int], n_frames: int, segments: list[dict]
) -> Iterator[np.ndarray]:
    """Yield the RGB frames of video `index` (deterministic in cfg.seed and index)."""
    rng = np.random.default_rng([cfg.seed, index, 1])
    w, h = cfg.width, cfg.height
    bg = _background(rng, w, h)
    drift = float(rng.uniform(4, 12)) * rng.choice([-1, 1])  # px per second
    distractors = []
    for _ in range(3):
        size = int(rng.integers(h // 8, h // 4))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = np.array(MUTED[int(rng.integers(len(MUTED)))], dtype=np.uint8)
        mask = _shape_mask(shape, size)
        tex = np.broadcast_to(colour, (size, size, 3))
        p0 = rng.uniform([0, 0], [w - size, h - size])
        vel = rng.uniform(-25, 25, size=2)
        distractors.append((mask, tex, p0, vel, size))
    sprites = [class_sprite(seg["class_index"], seg["size"]) for seg in segments]
    for i in range(n_frames):
        t = i / cfg.fps
        shift = round(t * drift) % (2 * w)
        frame = np.ascontiguousarray(np.roll(bg, -shift, axis=1)[:, :w])
        for mask, tex, p0, vel, size in distractors:
            p = p0 + vel * t
            span = np.array([w - size, h - size], dtype=float)
            p = span - np.abs(np.mod(p, 2 * span) - span)  # bounce off the edges
            _paste(frame, mask, tex, int(p[0]), int(p[1]))
        for seg, (mask, tex) in zip(segments, sprites):
            if seg["start"] <= t < seg["end"]:
                _paste(frame, mask, tex, *object_position(seg, t))
        yield frame


def plan_video(cfg: SynthConfig, index: int, counts: dict[int, int]) -> tuple[list[int], float]:
    """Classes (primary first) and duration of video `index`."""
    rng = np.random.default_rng([cfg.seed, index, 0])
    primary = index % cfg.classes
    classes = [primary]
    if cfg.classes > 1 and rng.uniform() < cfg.multi_label_fraction:
        others = [c for c in range(cfg.classes) if c // 2 != primary // 2] or [
            c for c in range(cfg.classes) if c != primary
        ]
        classes.append(int(others[int(rng.integers(len(others)))]))
    duration = float(rng.uniform(cfg.min_duration, cfg.max_duration))
    counts[primary] = counts.get(primary, 0) + 1
    return classes, duration


def make_synthetic_dataset(out_dir: str | Path, cfg: SynthConfig) -> list[SynthVideo]:
    """Write videos under out_dir/videos, plus manifest.parquet, classes.txt and synth.json.

    Every file appears atomically (featstore.atomic). The encoder (PyAV) and the manifest
    writer (pyarrow) are imported here, so `c2f synth --help` can read SynthConfig cheaply.
    """
    from featstore.atomic import publish, write_text
    from pipeline.encode import extension_for, write_video
    from pipeline.manifest import ManifestRow, rows_to_table, write_manifest

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    videos = []
    for i in range(cfg.videos):
        classes, duration = plan_video(cfg, i, counts)
        split = SPLIT_CYCLE[(counts[classes[0]] - 1) % len(SPLIT_CYCLE)]
        n_frames = max(1, round(duration * cfg.fps))
        duration = n_frames / cfg.fps
        seg_rng = np.random.default_rng([cfg.seed, i, 2])
        segments = _segments(seg_rng, duration, classes, cfg.width, cfg.height)
        codec = cfg.codecs[i % len(cfg.codecs)]
        video_id = f"synth_{i:04d}"
        path = out / "videos" / f"{video_id}{extension_for(codec)}"
        # The temporary name keeps the extension, from which the muxer is chosen.
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            write_video(tmp, render_frames(cfg, i, classes, n_frames, segments), codec=codec,
                        fps=cfg.fps)
            publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        videos.append(
            SynthVideo(
                video_id=video_id,
                path=str(path.resolve()),
                codec=codec,
                labels=[class_name(c) for c in classes],
                split=split,
                duration=duration,
                frames=n_frames,
                segments=segments,
            )
        )
        log.debug("wrote %s (%s, %.1f s, %s)", path, codec, duration, videos[-1].labels)
    rows = [ManifestRow(v.video_id, v.path, v.labels, v.split, v.duration) for v in videos]
    write_manifest(rows_to_table(rows), out / "manifest.parquet")
    names = [class_name(c) for c in range(cfg.classes)]
    write_text(out / "classes.txt", "".join(n + "\n" for n in names))
    meta = {"config": asdict(cfg), "classes": names, "videos": [asdict(v) for v in videos]}
    write_text(out / "synth.json", json.dumps(meta, indent=1))
    log.info("wrote %d synthetic videos (%d classes) to %s", len(videos), cfg.classes, out)
    return videos
