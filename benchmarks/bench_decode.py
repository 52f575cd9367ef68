"""Decode benchmark: 1 fps sampling of a minutes-long H.264 file on ONE CPU core.

Compares, each run `--repeats` times (median quoted):
  ffmpeg     ffmpeg -threads 1 -i IN -vf fps=1,scale=-2:256 -q:v 2 OUT/%05d.jpg -threads 1
             (only when an `ffmpeg` binary is on PATH)
  pyav-all   PyAV decodes every frame, keeps the one on screen at each second, same resize
             and JPEG as c2f
  c2f-exact  decode_video(..., SamplingPlan(fps=1, mode='exact'), backend='pyav') + JPEG
  c2f-key    decode_video(..., SamplingPlan(fps=1, mode='keyframe'), backend='pyav') + JPEG
and, for the `auto` rule, DALI-CPU against PyAV (both one thread) on VP9 and MJPEG files.

The process pins itself to one core (os.sched_setaffinity) and every decoder gets one thread;
ffmpeg inherits the affinity. Usage:
  python benchmarks/bench_decode.py --minutes 3 --gops 50,75 --work /tmp/bench_decode
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from pipeline.decode import decode_video
from pipeline.decode_pyav import PyAVOptions
from pipeline.encode import write_video
from pipeline.imageops import encode_jpeg, frame_to_rgb
from pipeline.sampling import target_times
from pipeline.types import FrameFormat, SamplingPlan

FMT = FrameFormat(short_side=256, jpeg_quality=90)
ONE_THREAD = PyAVOptions(threads=1, thread_type="SLICE")


def synthetic_clip(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Moving textured content (waves, drifting noise blocks) so P-frames carry real work."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(n):
        shift = (i * 3) % width
        base = texture[:, shift : shift + width].astype(np.float32) * 0.35
        wave = 80 * np.sin((xs + 4 * i) / 23.0)[..., None] + 60 * np.cos((ys - 2 * i) / 17.0)[
            ..., None
        ]
        frame = np.clip(base + 110 + wave * np.array([1.0, 0.6, -0.8]), 0, 255)
        frames.append(frame.astype(np.uint8))
    return frames


def loop_with_ffmpeg(ffmpeg: str, clip: Path, loops: int, out: Path) -> None:
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(clip),
         "-c", "copy", str(out)],
        check=True,
    )


def loop_with_pyav(clip: Path, loops: int, out: Path) -> None:
    """Remux the clip's packets `loops` times with shifted timestamps (no re-encode)."""
    with av.open(str(clip)) as src:
        packets = [p for p in src.demux(video=0) if p.size]
        stream_in = src.streams.video[0]
        span = max(p.pts for p in packets) + packets[-1].duration
        with av.open(str(out), mode="w") as dst:
            stream_out = dst.add_stream_from_template(stream_in)
            for k in range(loops):
                for p in packets:
                    p.pts += span if k else 0
                    p.dts += span if k else 0
                    p.stream = stream_out
                    dst.mux(p)


def build_long_h264(
    work: Path, minutes: float, fps: int, gop: int, ffmpeg: str | None
) -> tuple[Path, str]:
    """A minutes-long H.264 file made by looping a 12 s clip; says how it was made."""
    clip_frames = 12 * fps
    clip = work / "clip.mp4"
    write_video(clip, synthetic_clip(clip_frames, 640, 360), codec="h264", fps=fps, gop=gop,
                crf=23)
    loops = max(1, round(minutes * 60 / 12))
    long_file = work / f"long_{minutes:g}min.mp4"
    if ffmpeg:
        loop_with_ffmpeg(ffmpeg, clip, loops, long_file)
        how = f"ffmpeg -stream_loop {loops - 1} -c copy"
    else:
        loop_with_pyav(clip, loops, long_file)
        how = "no ffmpeg binary: PyAV remux of the clip's packets, looped (no re-encode)"
    return long_file, how


def fresh_dir(out: Path) -> Path:
    """An empty output folder, so frame counts never include an earlier run's files."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def write_jpegs(frames: list[np.ndarray], out: Path) -> None:
    fresh_dir(out)
    for i, rgb in enumerate(frames):
        (out / f"{i:05d}.jpg").write_bytes(encode_jpeg(rgb, FMT.jpeg_quality))


def run_ffmpeg(ffmpeg: str, path: Path, out: Path) -> dict:
    fresh_dir(out)
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-threads", "1", "-filter_threads", "1", "-i", str(path),
         "-vf", "fps=1,scale=-2:256", "-q:v", "2", str(out / "%05d.jpg"), "-threads", "1"],
        check=True,
    )
    return {"frames": len(list(out.glob("*.jpg")))}


def run_pyav_all(path: Path, out: Path) -> dict:
    """Baseline: decode every frame in order, keep the frame on screen at each 1 s target
    (streaming: only the latest frame is held, as ffmpeg's fps filter does)."""
    frames: list[np.ndarray] = []
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "SLICE"
        duration = float(stream.duration * stream.time_base)
        targets = target_times(SamplingPlan(fps=1), duration)
        held, start, k = None, None, 0
        for frame in container.decode(stream):
            decoded += 1
            t = float(frame.pts * stream.time_base)
            start = t if start is None else start
            while k < len(targets) and held is not None and start + targets[k] < t:
                frames.append(frame_to_rgb(held, FMT, 0))
                k += 1
            held = frame
        frames += [frame_to_rgb(held, FMT, 0) for _ in targets[k:]]
    write_jpegs(frames, out)
    return {"frames": len(frames), "decoded": decoded}


def run_c2f(path: Path, out: Path, mode: str, backend: str = "pyav") -> dict:
    video = decode_video(path, SamplingPlan(fps=1, mode=mode), FMT, backend=backend,
                         pyav_options=ONE_THREAD)
    write_jpegs(video.frames, out)
    return {"frames": len(video.frames), "decoded": video.info["frames_decoded"],
            "needed": video.info["frames_needed"]}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_round_robin(
    methods: list[tuple[str, Callable[[], dict]]], repeats: int
) -> list[tuple[str, float, float, dict]]:
    """(name, median wall s, median CPU s, result) per method. Methods alternate within each
    repeat so that load from other processes on the shared core falls on all of them alike;
    CPU time is what the method itself used, so it is the steadier figure on a busy machine."""
    wall: dict[str, list[float]] = {name: [] for name, _ in methods}
    cpu: dict[str, list[float]] = {name: [] for name, _ in methods}
    results: dict[str, dict] = {}
    for _ in range(repeats):
        for name, fn in methods:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            results[name] = fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - start_cpu)
    return [
        (name, statistics.median(wall[name]), statistics.median(cpu[name]), results[name])
        for name, _ in methods
    ]


def pin_to_one_core() -> int:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    return core


def bench_h264(
    work: Path, minutes: float, repeats: int, ffmpeg: str | None, gop: int
) -> None:
    work = work / f"gop{gop}"
    work.mkdir(parents=True, exist_ok=True)
    path, how = build_long_h264(work, minutes, fps=25, gop=gop, ffmpeg=ffmpeg)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = (f"{s.codec_context.width}x{s.codec_context.height} {float(s.average_rate):g} fps, "
                f"{c.duration / 1e6:.0f} s, GOP {gop} frames ({gop / 25:g} s), no B-frames")
    print(f"\ninput: {path.name}: {info}; built with {how}")
    methods: list[tuple[str, Callable[[], dict]]] = []
    if ffmpeg:
        methods.append(("ffmpeg", lambda: run_ffmpeg(ffmpeg, path, work / "out_ffmpeg")))
    else:
        print("ffmpeg: no binary on PATH, baseline not measured")
    methods += [
        ("pyav-all", lambda: run_pyav_all(path, work / "out_pyav_all")),
        ("c2f-exact", lambda: run_c2f(path, work / "out_exact", "exact")),
        ("c2f-key", lambda: run_c2f(path, work / "out_key", "keyframe")),
    ]
    rows = timed_round_robin(methods, repeats)
    base = {n: (w / r["frames"], c / r["frames"]) for n, w, c, r in rows if n == "ffmpeg"}
    base_wall, base_cpu = base.get("ffmpeg", (None, None))
    print(f"\n{'method':<10} {'frames':>6} {'wall s':>7} {'cpu s':>7} {'fr/s cpu':>9} "
          f"{'x ffmpeg cpu':>12} {'x ffmpeg wall':>13} {'decoded':>8} {'needed':>7} "
          f"{'dec/need':>8}")
    for name, wall_s, cpu_s, r in rows:
        n = r["frames"]
        x_cpu = f"{base_cpu / (cpu_s / n):.2f}" if base_cpu else "n/a"
        x_wall = f"{base_wall / (wall_s / n):.2f}" if base_wall else "n/a"
        dec, need = r.get("decoded"), r.get("needed")
        dn = f"{dec / need:.3f}" if dec and need else ""
        print(f"{name:<10} {n:>6} {wall_s:>7.2f} {cpu_s:>7.2f} {n / cpu_s:>9.1f} {x_cpu:>12} "
              f"{x_wall:>13} {dec if dec is not None else '':>8} "
              f"{need if need is not None else '':>7} {dn:>8}", flush=True)


def bench_dali_cpu(work: Path, seconds: int, repeats: int) -> None:
    """DALI-CPU vs PyAV, one thread each, exact 1 fps, on the codecs DALI-CPU supports."""
    frames = synthetic_clip(seconds * 25, 640, 360, seed=1)
    print(f"\nDALI-CPU vs PyAV (exact, 1 fps, one thread, {seconds} s 640x360 25 fps, GOP 75):")
    print(f"{'codec':<6} {'pyav cpu s':>10} {'dali-cpu cpu s':>14} {'dali/pyav':>10}")
    for codec, name in (("vp8", "clip_vp8.webm"), ("vp9", "clip_vp9.webm"),
                        ("mjpeg", "clip_mjpeg.avi")):
        path = write_video(work / name, frames, codec=codec, fps=25, gop=75)
        run_c2f(path, work / "out_dali", "exact", "dali")  # DALI loads its plugins once
        (_, _, pyav_s, _), (_, _, dali_s, _) = timed_round_robin(
            [("pyav", lambda p=path: run_c2f(p, work / "out_dali_ref", "exact")),
             ("dali", lambda p=path: run_c2f(p, work / "out_dali", "exact", "dali"))],
            repeats,
        )
        print(f"{codec:<6} {pyav_s:>10.2f} {dali_s:>14.2f} {dali_s / pyav_s:>10.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the H.264 input")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (median)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_decode"),
                        help="scratch folder for inputs and JPEG outputs")
    parser.add_argument("--dali-seconds", type=int, default=40,
                        help="length of the VP9/MJPEG files for DALI-CPU vs PyAV (0 skips)")
    parser.add_argument("--gops", default="50,75",
                        help="keyframe intervals in frames at 25 fps, one H.264 input each")
    parser.add_argument("--without-ffmpeg", action="store_true",
                        help="ignore an ffmpeg binary on PATH (loop with PyAV, no baseline)")
    args = parser.parse_args(argv)
    ffmpeg = None if args.without_ffmpeg else shutil.which("ffmpeg")
    args.work.mkdir(parents=True, exist_ok=True)
    core = pin_to_one_core()
    print(f"pinned to CPU core {core}; PyAV {av.__version__}; Python {sys.version.split()[0]}")
    for gop in (int(g) for g in args.gops.split(",")):
        bench_h264(args.work, args.minutes, args.repeats, ffmpeg, gop)
    if args.dali_seconds:
        bench_dali_cpu(args.work, args.dali_seconds, args.repeats)
    print("DALI mixed (GPU): not measured — no GPU machine was lent to this task.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
