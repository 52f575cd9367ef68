#!/usr/bin/env bash
# One prepared GPU check, for a machine with an NVIDIA GPU, Python 3.12, a CUDA build of torch,
# torchvision, h5py, pyarrow and OpenCV, but no Ray, PyAV, DALI or webdataset and no network.
#
# What it needs beyond that comes from wheels carried with the tree: WHEELS (default
# shared/wheels), filled beforehand where a registry is reachable with
#   pip download --python-version 3.12 --only-binary=:all: --dest shared/wheels \
#       "ray[default]" av webdataset nvidia-dali-cuda120
# Prints, within ~8 minutes on an H100/H200-class GPU:
#   1. the GPU's measured bf16 matmul rate, and ResNet-101@224 / MobileNetV2@112 extraction
#      images/s (fp32 and bf16 autocast, channels_last, batch 256) against the matmul-bound rate
#      that FLOPs table implies (target: ResNet-101 bf16 >= 25%);
#   2. 1 fps exact decoding of a long generated H.264 file: DALI `mixed` vs PyAV frames/s;
#   3. `c2f build` end to end on generated videos with the backbone worker pool on the GPU and
#      DALI decoding: sampled frames/s (target >= 2000 per GPU) and the worker's busy fraction.
# Usage: bash benchmarks/gpu_check.sh      (from the repository root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${WHEELS:-$ROOT/shared/wheels}"
PY="${PYTHON:-python3.12}"
WORK="$(mktemp -d /tmp/c2f-gpu-check.XXXXXX)"
START=$SECONDS
trap 'rm -rf "$WORK"' EXIT
say() { printf '[gpu_check %4ds] %s\n' $((SECONDS - START)) "$*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU"; print("torch", torch.__version__, "CUDA", torch.version.cuda)'

say "installing Ray, PyAV, DALI, webdataset from $WHEELS (no network)"
"$PY" -m venv --system-site-packages "$WORK/venv"   # keeps the machine's CUDA torch
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --no-index --find-links "$WHEELS" \
    "ray[default]" av webdataset nvidia-dali-cuda120
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export C2F_WORK="$WORK"

say "1. bf16 matmul rate and extraction images/s (batch 256, channels_last)"
"$VPY" - <<'EOF'
import time
import torch
from backbones.flops import view_cost
from pipeline.extract import ExtractView, forward_batch, load_view

torch.backends.cudnn.benchmark = True
dev = "cuda:0"

def timed(fn, repeats):
    fn(); torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats

n = 8192
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
tflops = 2 * n**3 / timed(lambda: a @ b, 20) / 1e12
print(f"bf16 matmul {n}x{n}: {tflops:.0f} TFLOP/s")
print("| view | GMACs/image | dtype | images/s | matmul-bound images/s | fraction |")
print("|---|---:|---|---:|---:|---:|")
for backbone, size in (("resnet101", 224), ("mobilenet_v2", 112)):
    gmacs = view_cost(backbone, size).gmacs
    lv = load_view(ExtractView("check", backbone, size), dev)
    x = torch.randn(256, 3, size, size, device=dev)
    bound = tflops * 1e12 / (2 * gmacs * 1e9)
    for dtype in ("float32", "bf16"):
        ips = 256 / timed(lambda: forward_batch(lv, x, dtype, dev), 10)
        print(f"| {backbone}@{size} | {gmacs:.3f} | {dtype} | {ips:.0f} | {bound:.0f} | "
              f"{ips / bound:.1%} |")
EOF

say "2. 1 fps exact decode of a long H.264 file: DALI mixed vs PyAV"
"$VPY" - <<'EOF'
import os, time
from pathlib import Path
import av, numpy as np
from pipeline.decode import decode_video
from pipeline.types import FrameFormat, SamplingPlan

path = Path(os.environ["C2F_WORK"]) / "long.mp4"
minutes, fps = 10, 30
with av.open(str(path), "w") as out:
    s = out.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
    s.options = {"preset": "ultrafast", "g": "60"}
    base = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    for i in range(minutes * 60 * fps):
        frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")
        for p in s.encode(frame):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
print(f"{minutes} min 1280x720 H.264 at {fps} fps, GOP 2 s")
for backend in ("dali", "pyav"):
    start = time.perf_counter()
    video = decode_video(path, SamplingPlan(fps=1.0), FrameFormat(256), backend=backend)
    secs = time.perf_counter() - start
    print(f"{backend}: {len(video.frames)} frames in {secs:.1f} s = "
          f"{len(video.frames) / secs:.0f} sampled frames/s ({video.info.get('backend')})")
EOF

say "3. c2f build end to end: pool on the GPU, videos (NVDEC) and JPEGs (nvJPEG) decoded there"
"$VPY" -m cluster.cli synth --out "$WORK/data" --videos 96 --classes 8 --width 640 \
    --height 360 --fps 30 --min-duration 150 --max-duration 180 --codecs h264 >/dev/null
BUILD_START=$(date +%s.%N)
"$VPY" -m cluster.cli build --manifest "$WORK/data/manifest.parquet" \
    --shards-out "$WORK/shards" --out "$WORK/store" --fps 1 --backend dali \
    --view coarse=mobilenet_v2@112 --view fine=resnet101@224 --device cuda --dtype bf16 \
    --batch-size 256 --pool 1 --gpus-per-worker 1 --videos-per-shard 8 --jpeg-decoder dali \
    --cpus-per-task 1 --mode local 2>"$WORK/build.err" >"$WORK/build.json" || true
BUILD_END=$(date +%s.%N)
grep -E '^\[c2f\] (worker|done)' "$WORK/build.err" || tail -20 "$WORK/build.err"
"$VPY" - "$WORK/build.json" "$BUILD_START" "$BUILD_END" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
frames, secs = info["store"]["frames"], float(sys.argv[3]) - float(sys.argv[2])
print(f"c2f build: {frames} sampled frames in {secs:.0f} s = {frames / secs:.0f} frames/s "
      "(end to end, including Ray start and shard writing)")
EOF
say "done"
