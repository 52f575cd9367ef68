"""Decode batches of shard JPEGs with NVIDIA DALI into torch uint8 tensors.

`device='mixed'` runs nvJPEG on the GPU and the frames stay in GPU memory: DALI's output is
copied device-to-device into a torch CUDA tensor (`feed_ndarray` on torch's current stream),
never through the host. `device='cpu'` runs DALI's CPU decoder (libjpeg-turbo, like Pillow)
into a torch CPU tensor. The two differ only in that device argument and where the torch tensor
lives. A DALI pipeline takes seconds to build, so `dali_jpeg_decoder` builds one per process
and settings, and every batch (of any size up to `max_batch`) reuses it. We copy out of DALI's
buffers rather than alias them through DLPack because DALI reuses them on the next run.

Which decoder extraction uses (`--jpeg-decoder auto|pillow|dali`): see `resolve_jpeg_decoder`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.types import DecodeError

log = logging.getLogger(__name__)

JPEG_DECODER_CHOICES = ("auto", "pillow", "dali")
# What the store records per view ("jpeg_decoder" view attribute).
JPEG_DECODERS = ("pillow", "dali-cpu", "dali-mixed")


def dali_importable() -> bool:
    """True when nvidia-dali is installed (its CPU decoder then works without a GPU)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_jpeg_decoder(choice: str, device: str) -> str:
    """--jpeg-decoder and --device -> 'pillow', 'dali-cpu' or 'dali-mixed'.

    auto picks DALI's GPU decoder when the backbones run on CUDA (decoding on the GPU frees the
    CPU cores that otherwise feed it, and the frames are already where the network is), and
    Pillow on CPU: there DALI's CPU decoder (the same libjpeg-turbo underneath) plus torch
    preprocessing ran at 0.43-0.63x Pillow's images/s on one core (benchmarks/
    bench_jpeg_decode.py; figures in benchmarks/README.md, "Feature store"). dali means
    dali-mixed on CUDA, dali-cpu on CPU.
    """
    if choice not in JPEG_DECODER_CHOICES:
        raise ValueError(f"jpeg decoder must be one of {JPEG_DECODER_CHOICES}, got {choice!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if choice == "pillow":
        return "pillow"
    if not dali_importable():
        if choice == "dali":
            raise RuntimeError("--jpeg-decoder dali asked for, but nvidia-dali is not installed")
        log.info("nvidia-dali not installed: decoding JPEGs with Pillow")
        return "pillow"
    if device == "cuda":
        return "dali-mixed"
    return "dali-cpu" if choice == "dali" else "pillow"


class DaliJpegDecoder:
    """A built DALI pipeline: JPEG bytes in, RGB uint8 H x W x 3 torch tensors out."""

    def __init__(self, device: str, max_batch: int, threads: int = 1, device_id: int = 0):
        from nvidia.dali import fn, pipeline_def, types

        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI device must be 'cpu' or 'mixed', got {device!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = device
        self.max_batch = max_batch
        self.torch_device = torch.device("cuda", device_id) if device == "mixed" else None

        @pipeline_def(
            batch_size=max_batch,
            num_threads=max(1, threads),
            device_id=device_id if device == "mixed" else None,
            prefetch_queue_depth=1,
            exec_dynamic=True,
        )
        def jpeg_pipeline():
            encoded = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(encoded, device=device, output_type=types.RGB)

        self._pipe = jpeg_pipeline()
        self._pipe.build()
        log.info(
            "built DALI %s JPEG pipeline (max batch %d, %d threads)",
            device,
            max_batch,
            max(1, threads),
        )

    def decode(self, jpegs: Sequence[bytes]) -> list[torch.Tensor]:
        """Decode JPEGs in order, `max_batch` per DALI run; one tensor per image."""
        images: list[torch.Tensor] = []
        for start in range(0, len(jpegs), self.max_batch):
            images.extend(self._run(jpegs[start : start + self.max_batch]))
        return images

    def _run(self, jpegs: Sequence[bytes]) -> list[torch.Tensor]:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self._pipe.feed_input("jpegs", [np.frombuffer(j, dtype=np.uint8) for j in jpegs])
        try:
            (out,) = self._pipe.run()
        except RuntimeError as exc:
            raise DecodeError("decode", f"DALI could not decode a JPEG batch: {exc}") from exc
        gpu = self.torch_device is not None
        stream = torch.cuda.current_stream(self.torch_device) if gpu else None
        target = self.torch_device if gpu else torch.device("cpu")
        if out.is_dense_tensor():  # the usual case: all frames of a video have one size
            dense = out.as_tensor()
            batch = torch.empty(dense.shape(), dtype=torch.uint8, device=target)
            feed_ndarray(dense, batch, cuda_stream=stream)
            return list(batch.unbind(0))
        images = []
        for i in range(len(out)):
            image = torch.empty(out[i].shape(), dtype=torch.uint8, device=target)
            feed_ndarray(out[i], image, cuda_stream=stream)
            images.append(image)
        return images


@functools.lru_cache(maxsize=4)
def dali_jpeg_decoder(device: str, max_batch: int, threads: int = 1) -> DaliJpegDecoder:
    """The process's decoder for these settings, built on first use (on the current GPU)."""
    device_id = torch.cuda.current_device() if device == "mixed" else 0
    return DaliJpegDecoder(device, max_batch, threads, device_id)
