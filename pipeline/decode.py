"""The one decode entry point: probe, choose targets and frames, pick a backend, decode.

    decode_video(path, SamplingPlan(fps=1), FrameFormat(short_side=256)) -> DecodedVideo

Backends: 'pyav' (CPU, threaded libavcodec), 'dali' (DALI 'mixed' on a GPU, DALI 'cpu'
otherwise), 'auto' (see choose_backend). All backends share the probe's packet index, so
targets, frame choice and timestamps are the same whichever decodes.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from pipeline import decode_dali, decode_pyav
from pipeline.probe import VideoProbe, probe_video
from pipeline.sampling import frames_needed, select_frames, target_times
from pipeline.types import DecodedVideo, DecodeError, FrameFormat, SamplingPlan

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyav", "dali")

# Codecs for which DALI on CPU beats PyAV, one thread each, exact 1 fps sampling. Measured by
# benchmarks/bench_decode.py (benchmarks/README.md, "Decode"), 40 s 640x360 clips: DALI-CPU
# took 2.55x PyAV's CPU time on VP9 and 8.0x on MJPEG (it re-opens and decodes forward for
# each call, PyAV seeks per GOP). So no codec qualifies and `auto` uses PyAV without a GPU.
DALI_CPU_FASTER: tuple[str, ...] = ()


@functools.cache
def gpu_visible() -> bool:
    """A CUDA device usable by DALI's 'mixed' decoder, asked once per process. DALI's own device
    count is the right question (a GPU DALI cannot see cannot decode) and, unlike importing
    torch for the check, costs a fraction of a second in every shard worker."""
    return decode_dali.dali_gpu_available()


def choose_backend(codec: str, gpu: bool | None = None) -> tuple[str, str, str]:
    """(backend, DALI device or '', reason) for `auto`: DALI mixed if a GPU is visible, DALI-CPU
    for codecs where it measured faster than PyAV, else PyAV."""
    gpu = gpu_visible() if gpu is None else gpu
    if gpu:
        return "dali", "mixed", "GPU visible: DALI mixed (NVDEC) decode"
    if codec in DALI_CPU_FASTER and codec in decode_dali.DALI_CPU_CODECS:
        return "dali", "cpu", f"no GPU; DALI-CPU measured faster than PyAV for {codec}"
    if codec in decode_dali.DALI_CPU_CODECS:
        return "pyav", "", f"no GPU; PyAV measured faster than DALI-CPU for {codec}"
    return "pyav", "", f"no GPU and DALI-CPU cannot decode {codec}"


def decode_video(
    path: str | Path,
    sampling: SamplingPlan | None = None,
    fmt: FrameFormat | None = None,
    backend: str = "auto",
    *,
    pyav_options: decode_pyav.PyAVOptions | None = None,
    dali_chunk: int = decode_dali.DEFAULT_CHUNK,
    probe: VideoProbe | None = None,
) -> DecodedVideo:
    """Sample frames from one video. Raises DecodeError(stage, reason) for unusable input.

    Defaults: SamplingPlan() (1 fps, exact), FrameFormat() (short side 256), PyAVOptions().

    `info` records the probe facts, the backend and why it was chosen, the target times,
    frames_decoded (frames the decoder produced; None for DALI, which does not report it) and
    frames_needed (fewest frames exact sampling must decode, from the packet index).
    """
    sampling = sampling or SamplingPlan()
    fmt = fmt or FrameFormat()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    probe = probe or probe_video(path)
    targets = target_times(sampling, probe.duration)
    absolute = [probe.start_time + t for t in targets]
    selected = select_frames(probe.frame_pts, probe.keyframes, absolute, sampling.mode)
    exact = select_frames(probe.frame_pts, probe.keyframes, absolute, "exact")
    if backend == "auto":
        backend, device, reason = choose_backend(probe.codec)
    elif backend == "dali":
        device = "mixed" if gpu_visible() else "cpu"
        reason = f"requested; DALI {device}"
    else:
        device, reason = "", "requested"
    log.debug("%s: %d targets, backend %s (%s)", path, len(targets), backend, reason)
    if backend == "dali":
        frames, stamps = decode_dali.decode_selected(
            probe, selected, fmt, device=device, chunk=dali_chunk
        )
        decoded = None
    else:
        frames, stamps, decoded = decode_pyav.decode_selected(
            probe, selected, fmt, pyav_options or decode_pyav.PyAVOptions()
        )
    if not frames:
        raise DecodeError("decode", "no frames decoded")
    info = probe.summary()
    info.update(
        backend=backend,
        decode_device=device or "cpu",
        backend_reason=reason,
        sampling_mode=sampling.mode,
        sampling_fps=sampling.fps,
        sampling_frames=sampling.frames,
        targets=targets,
        frames_decoded=decoded,
        frames_needed=frames_needed(exact, probe.keyframes),
        short_side=fmt.short_side,
        center_crop=fmt.center_crop,
    )
    return DecodedVideo(frames=frames, timestamps=stamps, info=info)
