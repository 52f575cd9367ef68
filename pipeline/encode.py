"""Write videos from RGB arrays with PyAV (used by `c2f synth` and by tests).

PyAV's wheels carry libx264, libvpx and mjpeg encoders, so no ffmpeg binary is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# codec name -> (PyAV encoder, container extension, pixel format)
CODECS = {
    "h264": ("libx264", ".mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
    "vp8": ("libvpx", ".webm", "yuv420p"),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p"),
}


def extension_for(codec: str) -> str:
    return CODECS[codec][1]


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    codec: str = "h264",
    fps: float = 25.0,
    gop: int | None = None,
    timestamps: Iterable[float] | None = None,
    rotation: int | None = None,
    crf: int = 18,
) -> Path:
    """Encode RGB uint8 frames (H×W×3, even H and W) into `path`.

    `gop` sets the keyframe interval in frames (default: 2 s worth; h264 adds no scene-cut
    keyframes, so the interval is exact). `timestamps`, when given,
    are per-frame presentation times in seconds (kept to the millisecond, so a stream can have
    variable frame rate or start later than 0). `rotation` is the clockwise angle a player
    must turn the stored picture to show it upright (90 for a phone held upright), written as
    a display matrix (mp4/mov only).
    """
    encoder, _, pix_fmt = CODECS[codec]
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    options = {"g": str(gop or max(1, round(2 * fps)))}
    if codec == "h264":
        # No scene-cut keyframes: the GOP is exactly `gop`, so tests and benchmarks know it.
        options.update(
            {"crf": str(crf), "preset": "veryfast", "bf": "0", "x264-params": "scenecut=0"}
        )
    elif codec in ("vp9", "vp8"):
        options.update({"crf": str(max(crf, 4)), "b": "0", "deadline": "realtime", "cpu-used": "8"})
    elif codec == "mjpeg":
        options.update({"q:v": "3"})
    stamps = None if timestamps is None else list(timestamps)
    time_base = Fraction(1, 1000) if stamps is not None else 1 / rate
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.pix_fmt = pix_fmt
        stream.time_base = time_base
        # The encoder's time base must match too, or x264 rounds pts to the nominal rate.
        stream.codec_context.time_base = time_base
        if rotation:
            if path.suffix not in (".mp4", ".mov"):
                raise ValueError("rotation can only be stored in .mp4/.mov files")
            # PyAV takes the counter-clockwise angle of FFmpeg's display matrix.
            stream.set_display_rotation(-rotation % 360)
        first = True
        for i, frame in enumerate(frames):
            if first:
                stream.height, stream.width = frame.shape[:2]
                first = False
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = round(stamps[i] * 1000) if stamps is not None else i
            vf.time_base = time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
