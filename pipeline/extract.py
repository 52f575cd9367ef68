"""Feature extraction: one WebDataset shard in, one feature-store part out.

`plan_extraction` lists one ExtractPlan per shard; `extract_shard(plan)` is the unit of
distributed work (a plain function: Ray only schedules it) and skips parts that already exist,
so an interrupted run resumes; `finalize_store` writes the catalog. `--device cuda` is checked
where a plan runs (pipeline/devices.py), never on the driver, so a CPU-only head can plan work
for GPU workers. Each view runs its own
backbone at its own input size on the shard's stored frames (views are independent: AR-Net's
resolution ladder is four views).

JPEGs are decoded by Pillow (frames as numpy arrays, Pillow preprocessing) or, with
`jpeg_decoder` dali-cpu / dali-mixed, by DALI in batches of `batch_size` into torch tensors
(on the GPU for dali-mixed) that are preprocessed in torch; each frame is decoded once and
shared by all views. Each view's store attributes record which decoder made its features.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backbones import CLIP_BACKBONES, build_backbone
from backbones.weights import weights_provenance
from featstore import (
    StoreError,
    StoreWriter,
    ViewSpec,
    build_catalog,
    list_parts,
    part_path,
    storage,
)
from featstore.catalog import open_part
from pipeline.devices import visible_gpu_ids, worker_device
from pipeline.jpeg_dali import dali_jpeg_decoder, resolve_jpeg_decoder
from pipeline.preprocess import preprocess_frames, preprocess_tensors, view_preprocess
from pipeline.reader import SHARD_GLOB, ShardSample, iter_shard, list_shards

log = logging.getLogger(__name__)

DTYPES = ("float32", "bf16", "fp16")
RANDOM_INIT = "random-init"
# Random-init backbones are seeded so every worker process builds the same network and the
# features of all parts of a store come from one model.
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class ExtractView:
    """One view to extract: a name, a backbone at an input size, and optional extras."""

    name: str
    backbone: str
    input_size: int
    weights: str | None = None
    stages: bool = False
    logits: bool = False


def parse_view(spec: str) -> ExtractView:
    """'coarse=mobilenet_v2@112' -> ExtractView('coarse', 'mobilenet_v2', 112)."""
    name, eq, rest = spec.partition("=")
    backbone, at, size = rest.partition("@")
    if not (eq and at and name and backbone and size.isdigit()):
        raise ValueError(
            f"bad view {spec!r}: expected NAME=BACKBONE@SIZE, e.g. coarse=mobilenet_v2@112"
        )
    if backbone in CLIP_BACKBONES:
        raise ValueError(
            f"view {name!r}: {backbone} takes clips, not frames; per-frame "
            "extraction needs an image backbone"
        )
    return ExtractView(name=name, backbone=backbone, input_size=int(size))


@dataclass(frozen=True)
class ExtractPlan:
    """Everything one `extract_shard` call needs; plain values so it pickles for Ray."""

    index: int
    shard: str
    store_dir: str
    part: str
    views: tuple[ExtractView, ...]
    batch_size: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    code_version: str = "unknown"
    threads: int = 0  # torch CPU threads for this task; 0 keeps torch's default
    jpeg_decoder: str = "pillow"  # pillow | dali-cpu | dali-mixed (resolved when planning)


@dataclass(frozen=True)
class ExtractResult:
    """What one call did: videos/frames written (or found, when the part already existed)."""

    index: int
    part: str
    videos: int
    frames: int
    skipped: bool
    seconds: float
    device: str = "cpu"  # where the backbones ran: cpu or cuda:0 of the visible set
    gpu_ids: tuple[str, ...] = ()  # the GPUs Ray assigned to the task (CUDA_VISIBLE_DEVICES)

    @property
    def videos_ok(self) -> int:
        return self.videos


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        version = importlib.metadata.version("c2f-video")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, timeout=5, capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"{version}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version


@dataclass(frozen=True)
class ExtractOptions:
    """How the views of one extraction run: `weights` {view: torchvision-layout checkpoint}
    (views without one are random-init, logged loudly), `stages` names views whose per-stage
    pooled features are stored, `logits` stores every view's classifier output too, then batch
    size, precision (bf16/fp16 autocast only on cuda), device, torch CPU threads (0 = torch's
    default) and the JPEG decoder (auto|pillow|dali, see `resolve_jpeg_decoder`)."""

    weights: Mapping[str, str] = field(default_factory=dict)
    stages: tuple[str, ...] = ()
    logits: bool = False
    batch_size: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0
    jpeg_decoder: str = "auto"


def plan_extraction(
    shards_dir: str | os.PathLike,
    store_dir: str | os.PathLike,
    views: Sequence[ExtractView | str],
    options: ExtractOptions = ExtractOptions(),
) -> list[ExtractPlan]:
    """One plan per `shard-*.tar` in `shards_dir`, in name order; part name = shard stem."""
    shards = list_shards(shards_dir)  # a local folder or a URL (s3://…)
    if not shards:
        raise FileNotFoundError(f"no {SHARD_GLOB} in {shards_dir}")
    return make_extract_plans(shards, store_dir, views, options)


def make_extract_plans(
    shards: Sequence[str | os.PathLike],
    store_dir: str | os.PathLike,
    views: Sequence[ExtractView | str],
    options: ExtractOptions = ExtractOptions(),
) -> list[ExtractPlan]:
    """Plans for the given shard paths (they need not exist yet: `c2f build` writes them)."""
    weights, stages, logits = dict(options.weights), set(options.stages), options.logits
    batch_size, dtype, device = options.batch_size, options.dtype, options.device
    threads, jpeg_decoder = options.threads, options.jpeg_decoder
    parsed = [parse_view(v) if isinstance(v, str) else v for v in views]
    names = [v.name for v in parsed]
    if not parsed or len(set(names)) != len(names):
        raise ValueError(f"need one or more views with distinct names, got {names}")
    unknown = (set(weights) | stages) - set(names)
    if unknown:
        raise ValueError(
            f"--weights/--stages name unknown views {sorted(unknown)}; views are {names}"
        )
    for view, path in weights.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"weights for view {view!r} not found: {path}")
    _check_runtime(device, dtype)
    decoder = resolve_jpeg_decoder(jpeg_decoder, device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parsed = [
        ExtractView(
            v.name,
            v.backbone,
            v.input_size,
            str(Path(weights[v.name]).resolve()) if v.name in weights else v.weights,
            v.stages or v.name in stages,
            v.logits or logits,
        )
        for v in parsed
    ]
    for v in parsed:
        if v.weights is None:
            log.warning(
                "view %s (%s@%d) has no --weights: RANDOM-INIT features (seed %d), fine "
                "for tests, meaningless for recognition",
                v.name,
                v.backbone,
                v.input_size,
                RANDOM_INIT_SEED,
            )
    version = code_version()
    storage.check_access(store_dir)  # a missing bucket or refused credentials: fail now
    paths = [storage.absolute(s) for s in shards]
    return [
        ExtractPlan(
            index=i,
            shard=s,
            store_dir=storage.absolute(store_dir),
            part=s.rsplit("/", 1)[-1].split(".")[0],
            views=tuple(parsed),
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            code_version=version,
            threads=threads,
            jpeg_decoder=decoder,
        )
        for i, s in enumerate(paths)
    ]


def _check_runtime(device: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cpu" and dtype != "float32":
        raise ValueError(f"dtype {dtype} is for GPU autocast; on CPU extract in float32")


@dataclass
class LoadedView:
    """A view's model on its device, with the output widths the store needs."""

    view: ExtractView
    model: torch.nn.Module
    feature_dim: int
    logits_dim: int
    stage_dims: dict[str, int] = field(default_factory=dict)
    weights_sha256: str = RANDOM_INIT


@functools.lru_cache(maxsize=8)
def load_view(view: ExtractView, device: str) -> LoadedView:
    """Build (once per process) the backbone of a view, in eval mode, channels_last."""
    if view.weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = build_backbone(view.backbone)
    else:
        model = build_backbone(view.backbone, weights=view.weights)
    model = model.eval().to(device=device, memory_format=torch.channels_last)
    probe = torch.zeros(1, 3, view.input_size, view.input_size, device=device)
    with torch.inference_mode():
        out = model.forward_stages(probe)
    stage_dims = {k: int(v.shape[1]) for k, v in out.items() if k not in ("features", "logits")}
    return LoadedView(
        view,
        model,
        int(out["features"].shape[1]),
        int(out["logits"].shape[1]),
        stage_dims,
        getattr(model, "weights_sha256", None) or RANDOM_INIT,
    )


def view_spec(lv: LoadedView, jpeg_decoder: str = "pillow") -> ViewSpec:
    """What the store records about a view: backbone, size, decoder, preprocessing, weights."""
    v = lv.view
    attrs = {
        **view_preprocess(v.input_size).attrs(jpeg_decoder),
        "weights": v.weights or RANDOM_INIT,
        "weights_sha256": lv.weights_sha256,
    }
    if v.weights is None:
        attrs["random_init_seed"] = RANDOM_INIT_SEED
    else:
        attrs.update(weights_provenance(v.weights, lv.weights_sha256))  # a fine-tuning run's
    return ViewSpec(dim=lv.feature_dim, backbone=v.backbone, input_size=v.input_size, attrs=attrs)


def forward_batch(
    lv: LoadedView, x: torch.Tensor, dtype: str, device: str
) -> dict[str, np.ndarray]:
    """One preprocessed batch [N, 3, S, S] through a view: features (logits, stages) as float32."""
    x = x.to(device=device, memory_format=torch.channels_last)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    amp = (
        torch.autocast(torch.device(device).type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    )
    with torch.inference_mode(), amp:
        out = (
            lv.model.forward_stages(x)
            if lv.view.stages
            else {"features": lv.model.forward_features(x)}
        )
        if lv.view.logits and "logits" not in out:
            out["logits"] = lv.model.head(out["features"])
    return {
        key: value.float().cpu().numpy()
        for key, value in out.items()
        if key != "logits" or lv.view.logits
    }


def _concat(chunks: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]} if chunks else {}


def run_view(
    lv: LoadedView, frames: Sequence[np.ndarray], batch_size: int, dtype: str, device: str
) -> dict[str, np.ndarray]:
    """Features (and logits/stages when asked) of a view for RGB frames, as float32 arrays."""
    pp = view_preprocess(lv.view.input_size)
    return _concat(
        [
            forward_batch(
                lv,
                torch.from_numpy(preprocess_frames(frames[start : start + batch_size], pp)),
                dtype,
                device,
            )
            for start in range(0, len(frames), batch_size)
        ]
    )


def run_views_on_jpegs(
    loaded: Sequence[LoadedView], jpegs: Sequence[bytes], plan: ExtractPlan, device: str
) -> dict[str, dict[str, np.ndarray]]:
    """Every view of a video's JPEGs decoded by DALI (`plan.jpeg_decoder` dali-cpu/-mixed).

    Each batch of `plan.batch_size` frames is decoded once, on the GPU for dali-mixed, and
    preprocessed in torch where it lies, for each view in turn.
    """
    decoder = dali_jpeg_decoder(
        "mixed" if plan.jpeg_decoder == "dali-mixed" else "cpu",
        plan.batch_size,
        plan.threads or min(4, os.cpu_count() or 1),
    )
    chunks: dict[str, list[dict[str, np.ndarray]]] = {lv.view.name: [] for lv in loaded}
    for start in range(0, len(jpegs), plan.batch_size):
        images = decoder.decode(jpegs[start : start + plan.batch_size])
        for lv in loaded:
            x = preprocess_tensors(images, view_preprocess(lv.view.input_size))
            chunks[lv.view.name].append(forward_batch(lv, x, plan.dtype, device))
    return {name: _concat(c) for name, c in chunks.items()}


def extract_samples(
    samples: Iterable[ShardSample],
    plan: ExtractPlan,
    attrs: Mapping[str, object] | None = None,
) -> tuple[int, int]:
    """Write the part of `plan` from samples (shard samples, or frames still in memory).

    Returns (videos, frames). The part appears under its final name only when complete.
    """
    device = worker_device(plan.device)
    loaded = [load_view(v, device) for v in plan.views]
    dali = plan.jpeg_decoder != "pillow"
    samples = iter(samples)
    first = next(samples, None)
    writer = open_part_writer(
        plan, view_layout(loaded, plan.jpeg_decoder), first.meta if first else None, attrs
    )
    videos = frames = 0
    with writer:
        for sample in _chain(first, samples):
            count = len(sample.frames) if sample.frames is not None else len(sample.jpegs)
            if not count:
                log.warning("%s: video %s has no frames; left out", plan.part, sample.key)
                continue
            if dali and sample.jpegs:
                outs = run_views_on_jpegs(loaded, sample.jpegs, plan, device)
            else:
                outs = {
                    lv.view.name: run_view(
                        lv, sample.frames, plan.batch_size, plan.dtype, device
                    )
                    for lv in loaded
                }
            add_video_outputs(writer, sample.key, sample.meta, count, outs)
            videos += 1
            frames += count
    return videos, frames


@dataclass(frozen=True)
class ViewLayout:
    """What a part's writer needs of a view, without its model: spec and output widths."""

    spec: ViewSpec
    stage_dims: dict[str, int] | None
    logits_dim: int | None


def view_layout(loaded: Sequence[LoadedView], jpeg_decoder: str) -> dict[str, ViewLayout]:
    """Layouts of loaded views, e.g. for a writer in another process than the models."""
    return {
        lv.view.name: ViewLayout(
            view_spec(lv, jpeg_decoder),
            lv.stage_dims if lv.view.stages else None,
            lv.logits_dim if lv.view.logits else None,
        )
        for lv in loaded
    }


def open_part_writer(
    plan: ExtractPlan,
    layout: Mapping[str, ViewLayout],
    first_meta: Mapping[str, object] | None,
    attrs: Mapping[str, object] | None = None,
) -> StoreWriter:
    """The writer of `plan.part`, with the run's attributes (sampling and frame format from
    the shard's first sample)."""
    file_attrs = {
        "shard": plan.shard,
        "code_version": plan.code_version,
        "dtype": plan.dtype,
        "device": plan.device,
        **dict(attrs or {}),
    }
    if first_meta is not None:
        file_attrs.setdefault("sampling", first_meta.get("sampling"))
        file_attrs.setdefault("frame_format", first_meta.get("format"))
    return StoreWriter(
        plan.store_dir,
        plan.part,
        {name: lay.spec for name, lay in layout.items()},
        stage_dims={n: lay.stage_dims for n, lay in layout.items() if lay.stage_dims} or None,
        logits_dim={n: lay.logits_dim for n, lay in layout.items() if lay.logits_dim} or None,
        attrs={k: v for k, v in file_attrs.items() if v is not None},
    )


def add_video_outputs(
    writer: StoreWriter,
    key: str,
    meta: Mapping[str, object],
    count: int,
    outs: Mapping[str, Mapping[str, np.ndarray]],
) -> None:
    """Add one video's per-view outputs (features, logits, stages) to a part."""
    writer.add_video(
        meta.get("video_id", key),
        meta.get("labels", []),
        meta.get("split", ""),
        np.asarray(meta.get("timestamps", range(count)), float),
        features={name: o["features"] for name, o in outs.items()},
        logits={name: outs[name]["logits"] for name in writer.logits_dim} or None,
        stages={
            name: {s: outs[name][s] for s in writer.stage_dims[name]}
            for name in writer.stage_dims
        }
        or None,
    )


def _chain(first: ShardSample | None, rest: Iterator[ShardSample]) -> Iterator[ShardSample]:
    if first is not None:
        yield first
        yield from rest


def finished_part(plan: ExtractPlan, started: float) -> ExtractResult | None:
    """The skipped-result of a part that already exists (its file is its completion record),
    None when it has to be made."""
    final = part_path(plan.store_dir, plan.part)
    if storage.exists(final):
        try:
            with open_part(final) as f:
                videos, frames = int(f.attrs["num_videos"]), int(f.attrs["num_frames"])
        except (OSError, KeyError) as e:
            raise StoreError(
                f"part {plan.part}: exists but is unreadable ({final}): {e}; "
                "delete it to extract it again"
            ) from e
        log.info("%s exists: skipped", final)
        return ExtractResult(
            plan.index, plan.part, videos, frames, True, time.perf_counter() - started,
            plan.device, visible_gpu_ids(),
        )
    return None


def extract_shard(plan: ExtractPlan) -> ExtractResult:
    """Extract every view of one shard into part `plan.part`, or skip it if already there."""
    started = time.perf_counter()
    done = finished_part(plan, started)
    if done is not None:
        return done
    previous = torch.get_num_threads()
    if plan.threads:
        # Oversubscribed intra-op threads are pathological on busy machines (measured 50x
        # slower with 2 threads on 2 shared cores), so the thread count is a plan setting.
        torch.set_num_threads(plan.threads)
    try:
        shard = iter_shard(plan.shard, decode_frames=plan.jpeg_decoder == "pillow")
        videos, frames = extract_samples(shard, plan)
    finally:
        torch.set_num_threads(previous)
    seconds = time.perf_counter() - started
    log.info("%s: %d videos, %d frames in %.1f s", plan.part, videos, frames, seconds)
    return ExtractResult(
        plan.index, plan.part, videos, frames, False, seconds,
        worker_device(plan.device), visible_gpu_ids(),
    )


def finalize_store(
    store_dir: str | os.PathLike, plans: Sequence[ExtractPlan] | None = None
) -> dict:
    """Write the catalog from all parts; with `plans`, first check every planned part exists."""
    if plans is not None:
        done = set(list_parts(store_dir))
        missing = [p.part for p in plans if p.part not in done]
        if missing:
            raise StoreError(
                f"{len(missing)} planned parts are not written yet, e.g. "
                f"{missing[:3]}; re-run the extraction to finish them"
            )
    catalog = build_catalog(store_dir)
    lengths = catalog.column("length").to_pylist()
    return {
        "store": str(store_dir),
        "parts": len(list_parts(store_dir)),
        "videos": catalog.num_rows,
        "frames": int(sum(lengths)),
    }
