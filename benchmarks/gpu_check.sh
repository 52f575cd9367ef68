#!/usr/bin/env bash
# One prepared GPU check, for a machine with an NVIDIA GPU, Python 3.12, a CUDA build of torch,
# torchvision, h5py, pyarrow and OpenCV, but no Ray, PyAV, DALI or webdataset and no network
# (the device machine of docs: /work/.library/device).
#
# What it needs beyond that travels as wheels in WHEELS (default .whl in the repository root,
# ignored by git), fetched beforehand where a registry is reachable, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl av webdataset
# Each wheel is optional and each section says what it skipped and why. The device tool carries
# at most 64 MiB, so av (35 MB) and webdataset fit, Ray (79 MB) and DALI (424 MB) do not: there
# the build runs in-process with PyAV decoding; on a machine that has Ray and DALI installed it
# runs the worker pool with videos (NVDEC) and JPEGs (nvJPEG) decoded on the worker's GPU.
#
# Prints, within ~8 minutes on an H100/H200-class GPU:
#   1. the GPU's measured bf16 matmul rate, and ResNet-101@224 / MobileNetV2@112 extraction
#      images/s (float32 and bf16 autocast, channels_last, batch 256) against the matmul-bound
#      rate the FLOPs table implies (target: ResNet-101 bf16 >= 25%);
#   2. 1 fps exact decoding of a long generated H.264 file: PyAV, and DALI `mixed` if installed;
#   3. `c2f build` end to end on generated videos: sampled frames/s (target >= 2000 per GPU with
#      DALI decode) and the GPU's busy fraction (nvidia-smi utilisation sampled every 0.5 s).
# Usage: bash benchmarks/gpu_check.sh      (from anywhere)
#   C2F_CHECK_DEVICE=cpu C2F_CHECK_SMALL=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
# runs the same steps at toy sizes on a CPU, to check the script itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${WHEELS:-$ROOT/.whl}"
PY="${PYTHON:-python3}"
export C2F_CHECK_DEVICE="${C2F_CHECK_DEVICE:-cuda}"
export C2F_CHECK_SMALL="${C2F_CHECK_SMALL:-0}"
WORK="$(mktemp -d /tmp/c2f-gpu-check.XXXXXX)"
export C2F_WORK="$WORK"
START=$SECONDS
trap 'rm -rf "$WORK"' EXIT
say() { printf '[gpu_check %4ds] %s\n' $((SECONDS - START)) "$*"; }
small() { [ "$C2F_CHECK_SMALL" = 1 ]; }
have() { "$PY" -c "import $1" >/dev/null 2>&1; }

if [ "$C2F_CHECK_DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c 'import os, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda)
assert os.environ["C2F_CHECK_DEVICE"] == "cpu" or torch.cuda.is_available(), "no CUDA GPU"'

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "installing $(ls "$WHEELS"/*.whl | wc -l) wheel(s) from $WHEELS (no network)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl
fi
export PYTHONPATH="$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
for module in av webdataset ray nvidia.dali; do
    if have "$module"; then say "$module: installed"; else say "$module: not installed"; fi
done

say "1. bf16 matmul rate and extraction images/s (channels_last)"
"$PY" - <<'EOF'
import os
import time

import torch

from backbones.flops import view_cost
from pipeline.extract import ExtractView, forward_batch, load_view

small = os.environ["C2F_CHECK_SMALL"] == "1"
dev = "cuda:0" if os.environ["C2F_CHECK_DEVICE"] == "cuda" else "cpu"
torch.backends.cudnn.benchmark = True
n, batch, repeats = (512, 8, 1) if small else (8192, 256, 10)


def sync():
    if dev != "cpu":
        torch.cuda.synchronize()


def timed(fn, times):
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(times):
        fn()
    sync()
    return (time.perf_counter() - start) / times


a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
tflops = 2 * n**3 / timed(lambda: a @ b, 2 * repeats) / 1e12
print(f"bf16 matmul {n}x{n}: {tflops:.1f} TFLOP/s")
print(f"| view | GMACs/image | dtype | images/s (batch {batch}) | matmul-bound images/s | "
      "fraction |")
print("|---|---:|---|---:|---:|---:|")
for backbone, size in (("resnet101", 224), ("mobilenet_v2", 112)):
    gmacs = view_cost(backbone, size).gmacs
    lv = load_view(ExtractView("check", backbone, size), dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    bound = tflops * 1e12 / (2 * gmacs * 1e9)
    for dtype in ("float32", "bf16"):
        ips = batch / timed(lambda: forward_batch(lv, x, dtype, dev), repeats)
        print(f"| {backbone}@{size} | {gmacs:.3f} | {dtype} | {ips:.0f} | {bound:.0f} | "
              f"{ips / bound:.1%} |")
EOF

if ! have av; then
    say "2 and 3 skipped: PyAV is not installed (put its wheel in $WHEELS)"
    exit 0
fi

say "2. 1 fps exact decode of a long H.264 file: PyAV, DALI mixed"
"$PY" - <<'EOF'
import importlib.util
import os
import time
from pathlib import Path

import av
import numpy as np

from pipeline.decode import decode_video
from pipeline.types import FrameFormat, SamplingPlan

small = os.environ["C2F_CHECK_SMALL"] == "1"
path = Path(os.environ["C2F_WORK"]) / "long.mp4"
seconds, fps, (width, height) = (12, 30, (320, 180)) if small else (300, 30, (1280, 720))
with av.open(str(path), "w") as out:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"preset": "ultrafast", "g": str(2 * fps)}
    base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    for i in range(seconds * fps):
        frame = av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
print(f"{seconds} s {width}x{height} H.264 at {fps} fps, GOP 2 s")
backends = ["pyav"]
if importlib.util.find_spec("nvidia.dali") is None:
    print("dali: skipped, not installed")
elif os.environ["C2F_CHECK_DEVICE"] != "cuda":
    print("dali: skipped, H.264 needs its GPU (mixed) backend")
else:
    backends.insert(0, "dali")
for backend in backends:
    start = time.perf_counter()
    video = decode_video(path, SamplingPlan(fps=1.0), FrameFormat(256), backend=backend)
    secs = time.perf_counter() - start
    print(f"{backend}: {len(video.frames)} frames in {secs:.2f} s = "
          f"{len(video.frames) / secs:.0f} sampled frames/s ({video.info.get('decode_device')})")
EOF

if ! have webdataset; then
    say "3 skipped: webdataset is not installed (put its wheel in $WHEELS)"
    exit 0
fi
if small; then
    SYNTH=(--videos 2 --width 320 --height 240 --fps 10 --min-duration 8 --max-duration 10)
    ROWS=4
else  # 8 distinct long videos, each listed 6 times: the decoding is real, the synthesis short
    SYNTH=(--videos 8 --width 640 --height 360 --fps 30 --min-duration 120 --max-duration 150)
    ROWS=48
fi
say "3. c2f build end to end ($ROWS videos)"
"$PY" -m cluster.cli synth --out "$WORK/data" --classes 2 --codecs h264 "${SYNTH[@]}" >/dev/null
"$PY" - "$WORK/data/manifest.parquet" "$ROWS" <<'EOF'
import sys

from pipeline.manifest import ManifestRow, read_manifest, rows_to_table, write_manifest

rows = [ManifestRow(**r) for r in read_manifest(sys.argv[1]).to_pylist()]
rows = [ManifestRow(**{**vars(rows[i % len(rows)]), "video_id": f"v{i:04d}"})
        for i in range(int(sys.argv[2]))]
write_manifest(rows_to_table(rows), sys.argv[1])
EOF
if [ "$C2F_CHECK_DEVICE" = cuda ]; then DTYPE=bf16 BATCH=256 GPUS=1; else DTYPE=float32 BATCH=16 GPUS=0; fi
if have ray; then
    DECODE=(--backend pyav)  # DALI decodes H.264 only on a GPU
    if have nvidia.dali && [ "$C2F_CHECK_DEVICE" = cuda ]; then
        DECODE=(--backend dali --jpeg-decoder dali)
    fi
    RUN=(--pool 1 --gpus-per-worker "$GPUS" --mode local "${DECODE[@]}")
    say "Ray installed: the backbone worker pool (${DECODE[*]})"
else
    RUN=(--mode inprocess --backend pyav)
    say "no Ray: in-process, PyAV decode (the pool needs Ray)"
fi
if [ "$C2F_CHECK_DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 \
        >"$WORK/util.txt" &
    SAMPLER=$!
fi
BUILD_START=$(date +%s.%N)
"$PY" -m cluster.cli build --manifest "$WORK/data/manifest.parquet" \
    --shards-out "$WORK/shards" --out "$WORK/store" --fps 1 --videos-per-shard 8 \
    --view coarse=mobilenet_v2@112 --view fine=resnet101@224 --device "$C2F_CHECK_DEVICE" \
    --dtype "$DTYPE" --batch-size "$BATCH" "${RUN[@]}" 2>"$WORK/build.err" >"$WORK/build.json" \
    || true
BUILD_END=$(date +%s.%N)
[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
grep -E '^\[c2f\] (worker|done)' "$WORK/build.err" || tail -20 "$WORK/build.err"
if [ ! -s "$WORK/build.json" ]; then
    say "c2f build failed: its last lines are above"
    exit 1
fi
"$PY" - "$WORK/build.json" "$BUILD_START" "$BUILD_END" "$WORK/util.txt" <<'EOF'
import json
import sys
from pathlib import Path

info = json.load(open(sys.argv[1]))
frames, secs = info["store"]["frames"], float(sys.argv[3]) - float(sys.argv[2])
print(f"c2f build: {frames} sampled frames in {secs:.1f} s = {frames / secs:.0f} frames/s "
      "(end to end, including start-up and shard writing)")
util = Path(sys.argv[4])
samples = [float(x) for x in util.read_text().split()] if util.exists() else []
if samples:
    print(f"GPU busy (nvidia-smi utilization.gpu, {len(samples)} samples at 0.5 s): "
          f"mean {sum(samples) / len(samples):.0f}%")
EOF
say "done"
