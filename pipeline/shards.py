"""WebDataset shards of sampled frames: plan, write one shard, finalize the index.

The on-disk contract is in docs/shards.md. In short: DIR/shard-000000.tar … hold one sample per
video (`<key>.json` + `<key>.NNNN.jpg`), each with a sidecar DIR/shard-000000.meta.json holding
that shard's index and error rows; DIR/settings.json pins the settings the directory was made
with; `finalize` gathers the sidecars into DIR/index.parquet and DIR/errors.parquet.

`write_shard(plan)` is the unit of distributed work: a plain function from a picklable plan to
a finished file, which Ray (cluster/executor.py), a test or a for-loop may call alike. It
writes under a temporary name and publishes when complete (featstore.storage: rename locally,
one upload on object storage), so a killed run never leaves a partial shard under a final
name, and a re-run skips what is finished. DIR may be a local folder or a URL (`s3://…`).

Tars are written with webdataset's TarWriter with fixed member headers (mtime 0, uid/gid 0,
empty user/group names, mode 0644, members sorted by name), so the same inputs give the same
bytes on any machine, any day.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa

from featstore import storage
from pipeline.decode import BACKENDS
from pipeline.keys import sample_key
from pipeline.shard_worker import DecodeWorker, EncodedVideo
from pipeline.types import DecodeError, FrameFormat, SamplingPlan

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SETTINGS_FILE = "settings.json"
INDEX_FILE = "index.parquet"
ERRORS_FILE = "errors.parquet"
MANIFEST_COLUMNS = ("video_id", "path", "labels", "split", "duration")

# Fixed tar member attributes: the same inputs give the same bytes on any machine, any day.
MEMBER_MTIME = 0
MEMBER_MODE = 0o644

# Byte estimate for `target_bytes` packing (see docs/shards.md): JPEG bytes per stored pixel of
# natural video at a given quality, interpolated linearly between these points.
JPEG_BYTES_PER_PIXEL = ((50, 0.08), (75, 0.12), (90, 0.20), (95, 0.30), (100, 0.80))
ASSUMED_ASPECT = 16 / 9
DEFAULT_DURATION_S = 300.0
TAR_BYTES_PER_MEMBER = 512 + 256  # header + average padding
JSON_BYTES_PER_FRAME = 24  # one timestamp in the sample json
JSON_BYTES_PER_SAMPLE = 1024

INDEX_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("key", pa.string()),
        ("shard", pa.string()),
        ("num_frames", pa.int64()),
        ("timestamps", pa.list_(pa.float64())),
        ("status", pa.string()),
        ("backend", pa.string()),
    ]
)
ERRORS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)


class ShardSettingsError(ValueError):
    """The output directory was made with other settings or another manifest."""


class IncompleteShardsError(RuntimeError):
    """`finalize` found planned shards that are not written yet."""


@dataclass(frozen=True)
class PlannedVideo:
    """One manifest row as a shard needs it, with its precomputed sample key."""

    video_id: str
    key: str
    path: str
    labels: tuple[str, ...]
    split: str
    duration: float | None


@dataclass(frozen=True)
class ShardPlan:
    """Everything needed to write one shard; plain values only, so it pickles for Ray."""

    index: int
    out_dir: str
    videos: tuple[PlannedVideo, ...]
    sampling: SamplingPlan
    fmt: FrameFormat
    backend: str
    timeout_s: float
    settings_sha256: str

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def path(self) -> str:
        """Final location of the shard: a local path or a URL, like `out_dir`."""
        return storage.join(self.out_dir, self.name)


@dataclass(frozen=True)
class ShardResult:
    """What one `write_shard` call did; counts come from the sidecar when it skipped."""

    index: int
    path: str
    videos_ok: int
    videos_failed: int
    frames: int
    bytes: int
    skipped: bool
    seconds: float


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sidecar_name(index: int) -> str:
    return f"shard-{index:06d}.meta.json"


def frame_member_width(num_frames: int) -> int:
    """Digits in frame member names: 4, or more when a sample has over 10,000 frames, so the
    names of one sample always sort in frame order."""
    return max(4, len(str(max(num_frames - 1, 0))))


# --------------------------------------------------------------------------------- planning


def _manifest_rows(manifest: pa.Table) -> list[PlannedVideo]:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.column_names]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; has {manifest.column_names}")
    cols = {c: manifest.column(c).to_pylist() for c in MANIFEST_COLUMNS}
    videos = []
    for i in range(manifest.num_rows):
        video_id = cols["video_id"][i]
        if video_id is None or cols["path"][i] is None:
            raise ValueError(f"manifest row {i} has no video_id or path")
        duration = cols["duration"][i]
        videos.append(
            PlannedVideo(
                video_id=video_id,
                key=sample_key(video_id),
                path=cols["path"][i],
                labels=tuple(cols["labels"][i] or ()),
                split=cols["split"][i] or "",
                duration=None if duration is None or not math.isfinite(duration) else duration,
            )
        )
    _check_unique(videos)
    return videos


def _check_unique(videos: list[PlannedVideo]) -> None:
    seen: dict[str, str] = {}
    duplicates = []
    for video in videos:
        if video.video_id in seen:
            duplicates.append(video.video_id)
        seen[video.video_id] = video.key
    if duplicates:
        raise ValueError(f"manifest has {len(duplicates)} duplicate video ids: {duplicates[:10]}")
    by_key: dict[str, str] = {}
    for video_id, key in seen.items():
        if key in by_key:
            raise ValueError(f"video ids {by_key[key]!r} and {video_id!r} map to one key {key}")
        by_key[key] = video_id


def _jpeg_bytes_per_pixel(quality: int) -> float:
    points = JPEG_BYTES_PER_PIXEL
    if quality <= points[0][0]:
        return points[0][1]
    for (q0, b0), (q1, b1) in itertools.pairwise(points):
        if quality <= q1:
            return b0 + (b1 - b0) * (quality - q0) / (q1 - q0)
    return points[-1][1]


def estimate_video_bytes(duration: float | None, sampling: SamplingPlan, fmt: FrameFormat) -> int:
    """Rough size of one sample in a shard, for `target_bytes` packing (docs/shards.md)."""
    if sampling.frames is not None:
        frames = sampling.frames
    else:
        frames = max(1, math.ceil((duration or DEFAULT_DURATION_S) * sampling.fps))
    if fmt.center_crop:
        pixels = fmt.center_crop * fmt.center_crop
    else:
        pixels = fmt.short_side * fmt.short_side * ASSUMED_ASPECT
    per_frame = pixels * _jpeg_bytes_per_pixel(fmt.jpeg_quality) + TAR_BYTES_PER_MEMBER
    per_frame += JSON_BYTES_PER_FRAME
    return int(frames * per_frame + JSON_BYTES_PER_SAMPLE + TAR_BYTES_PER_MEMBER)


def _group(
    videos: list[PlannedVideo],
    sampling: SamplingPlan,
    fmt: FrameFormat,
    videos_per_shard: int,
    target_bytes: int | None,
) -> list[list[PlannedVideo]]:
    if target_bytes is None:
        return [videos[i : i + videos_per_shard] for i in range(0, len(videos), videos_per_shard)]
    known = [v.duration for v in videos if v.duration is not None]
    fallback = statistics.median(known) if known else DEFAULT_DURATION_S
    groups: list[list[PlannedVideo]] = []
    current: list[PlannedVideo] = []
    size = 0
    for video in videos:
        est = estimate_video_bytes(
            video.duration if video.duration is not None else fallback, sampling, fmt
        )
        if current and size + est > target_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(video)
        size += est
    if current:
        groups.append(current)
    return groups


def _manifest_sha256(videos: Iterable[PlannedVideo]) -> str:
    rows = [[v.video_id, v.path, list(v.labels), v.split, v.duration] for v in videos]
    return hashlib.sha256(_canonical_json(rows)).hexdigest()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _settings(
    videos: list[PlannedVideo],
    groups: list[list[PlannedVideo]],
    sampling: SamplingPlan,
    fmt: FrameFormat,
    backend: str,
    videos_per_shard: int,
    target_bytes: int | None,
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "sampling": asdict(sampling),
        "format": asdict(fmt),
        "backend": backend,
        "sharding": {
            "videos_per_shard": None if target_bytes is not None else videos_per_shard,
            "target_bytes": target_bytes,
        },
        "manifest_sha256": _manifest_sha256(videos),
        "videos": len(videos),
        "shards": len(groups),
    }


def _pin_settings(out_dir: str, settings: dict) -> str:
    """Write DIR/settings.json, or check that the one there matches; return its digest."""
    path = storage.join(out_dir, SETTINGS_FILE)
    if storage.exists(path):
        existing = json.loads(storage.read_text(path))
        keys = set(existing) | set(settings)
        changed = sorted(k for k in keys if existing.get(k) != settings.get(k))
        if changed:
            details = "; ".join(
                f"{k}: was {existing.get(k)!r}, now {settings.get(k)!r}"
                for k in changed
                if k != "manifest_sha256"
            )
            if "manifest_sha256" in changed:
                details = (details + "; " if details else "") + "the manifest's videos differ"
            raise ShardSettingsError(
                f"{out_dir} already holds shards made with other settings ({details}). "
                "Mixing them would give an inconsistent dataset: write to a new output "
                "directory, or delete this one to rebuild it."
            )
    else:
        storage.write_bytes(path, _canonical_json(settings) + b"\n")
    return hashlib.sha256(_canonical_json(settings)).hexdigest()


def _check_decode_settings(fmt: FrameFormat, backend: str) -> None:
    """Catch settings that would fail every video now, before any work (not as error rows)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if fmt.short_side < 2:
        raise ValueError(f"short_side must be >= 2, got {fmt.short_side}")
    if fmt.center_crop is not None and not 1 <= fmt.center_crop <= fmt.short_side:
        raise ValueError(f"center_crop must be in 1..short_side, got {fmt.center_crop}")
    if not 1 <= fmt.jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {fmt.jpeg_quality}")


def plan_shards(
    manifest: pa.Table,
    out_dir: str | os.PathLike,
    *,
    sampling: SamplingPlan,
    fmt: FrameFormat,
    backend: str = "auto",
    videos_per_shard: int = 64,
    target_bytes: int | None = None,
    timeout_s: float = 120.0,
) -> list[ShardPlan]:
    """Split a manifest into shard plans and pin the settings in `out_dir`.

    Deterministic: videos keep the manifest's row order, shard i takes the next run of rows.
    With `target_bytes`, shards are packed by the estimated sample size instead of by count.
    Raises ShardSettingsError if `out_dir` was made with other settings or another manifest,
    and StorageError if `out_dir` is on object storage that cannot be used (no bucket, refused
    credentials) — before any work.
    """
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be >= 1, got {videos_per_shard}")
    if target_bytes is not None and target_bytes < 1:
        raise ValueError(f"target_bytes must be >= 1, got {target_bytes}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    _check_decode_settings(fmt, backend)
    videos = _manifest_rows(manifest)
    groups = _group(videos, sampling, fmt, videos_per_shard, target_bytes)
    storage.check_access(out_dir)
    out = storage.absolute(out_dir)  # Ray workers may run in another directory
    if not storage.is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    settings = _settings(videos, groups, sampling, fmt, backend, videos_per_shard, target_bytes)
    digest = _pin_settings(out, settings)
    plans = [
        ShardPlan(
            index=i,
            out_dir=out,
            videos=tuple(group),
            sampling=sampling,
            fmt=fmt,
            backend=backend,
            timeout_s=float(timeout_s),
            settings_sha256=digest,
        )
        for i, group in enumerate(groups)
    ]
    log.info("planned %d shards for %d videos in %s", len(plans), len(videos), out)
    return plans


# --------------------------------------------------------------------------------- writing


def _plain(value: object) -> object:
    """Make decoder info JSON-safe: numpy scalars and Fractions to numbers, NaN/inf to None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating, Fraction, Decimal)):
        number = float(value)
        return number if math.isfinite(number) else None
    return str(value)


def sample_json(video: PlannedVideo, encoded: EncodedVideo, plan: ShardPlan) -> dict:
    """The `<key>.json` of one sample: who the video is, how it was decoded and sampled."""
    info = encoded.info
    meta = {
        "format_version": FORMAT_VERSION,
        "video_id": video.video_id,
        "key": video.key,
        "labels": list(video.labels),
        "split": video.split,
        "path": video.path,
        "sampling": asdict(plan.sampling),
        "format": asdict(plan.fmt),
        "width": encoded.width,
        "height": encoded.height,
        "num_frames": len(encoded.jpegs),
        "timestamps": [float(t) for t in encoded.timestamps],
    }
    for field_name in (
        "container",
        "codec",
        "native_fps",
        "duration",
        "start_time",
        "rotation",
        "backend",
        "backend_reason",
        "frames_decoded",
        "frames_needed",
    ):
        meta[field_name] = _plain(info.get(field_name))
    meta["source_width"] = _plain(info.get("width"))
    meta["source_height"] = _plain(info.get("height"))
    return meta


def sample_members(
    video: PlannedVideo, encoded: EncodedVideo, plan: ShardPlan
) -> list[tuple[str, bytes]]:
    """Tar members of one sample in sorted name order: frames by index, then the json."""
    width = frame_member_width(len(encoded.jpegs))
    members = [(f"{video.key}.{i:0{width}d}.jpg", jpg) for i, jpg in enumerate(encoded.jpegs)]
    members.append((f"{video.key}.json", _canonical_json(sample_json(video, encoded, plan))))
    return sorted(members)


def sample_dict(members: list[tuple[str, bytes]]) -> dict[str, bytes | str]:
    """Members of one sample as a webdataset sample: {"__key__": key, extension: bytes}."""
    sample: dict[str, bytes | str] = {}
    for name, data in members:
        key, _, ext = name.partition(".")
        sample["__key__"] = key
        sample[ext] = data
    return sample


def open_tar_writer(fileobj: object) -> object:
    """webdataset's TarWriter with the fixed member headers of docs/shards.md. It writes
    members in sorted extension order, which is our sorted name order (one key per sample)."""
    from webdataset import TarWriter  # imports torch: keep it out of `c2f --help`

    return TarWriter(fileobj, user="", group="", mode=MEMBER_MODE, mtime=MEMBER_MTIME,
                     encoder=False)


def _check_settings(out_dir: str, plan: ShardPlan) -> None:
    path = storage.join(out_dir, SETTINGS_FILE)
    if not storage.exists(path):
        raise ShardSettingsError(f"{path} is missing; plan shards with plan_shards() first")
    digest = hashlib.sha256(_canonical_json(json.loads(storage.read_bytes(path)))).hexdigest()
    if digest != plan.settings_sha256:
        raise ShardSettingsError(
            f"{path} no longer matches the settings this plan was made with; "
            "re-plan with plan_shards() (it explains what changed)"
        )


def _read_sidecar(path: str) -> dict:
    return json.loads(storage.read_text(path))


def _skip_result(plan: ShardPlan, sidecar: dict, started: float) -> ShardResult:
    planned = [v.video_id for v in plan.videos]
    if sidecar.get("videos") != planned:
        raise ShardSettingsError(
            f"{plan.path} was written for other videos than this plan holds; "
            "the output directory belongs to another manifest"
        )
    if sidecar.get("settings_sha256") != plan.settings_sha256:
        raise ShardSettingsError(
            f"{plan.path} was written with other settings than {SETTINGS_FILE} now holds; "
            "write to a new output directory, or delete this one to rebuild it"
        )
    log.info("%s already complete; skipping", plan.path)
    return ShardResult(
        index=plan.index,
        path=plan.path,
        videos_ok=sidecar["videos_ok"],
        videos_failed=sidecar["videos_failed"],
        frames=sidecar["frames"],
        bytes=sidecar["bytes"],
        skipped=True,
        seconds=time.perf_counter() - started,
    )


def write_shard(plan: ShardPlan) -> ShardResult:
    """Decode the plan's videos into one finished shard and its sidecar, or skip if done.

    Failed videos are left out of the tar and recorded as error rows. Problems that are not
    about one video raise and leave no shard behind, so a re-run retries it: an output
    directory whose settings changed (ShardSettingsError) or a decoder process that cannot
    start at all (WorkerStartError).
    """
    started = time.perf_counter()
    out = plan.out_dir
    final = plan.path
    sidecar_path = storage.join(out, sidecar_name(plan.index))
    _check_settings(out, plan)
    if storage.exists(final) and storage.exists(sidecar_path):
        return _skip_result(plan, _read_sidecar(sidecar_path), started)
    if storage.exists(final):
        log.warning("%s has no sidecar; rewriting it", final)

    index_rows: list[dict] = []
    error_rows: list[dict] = []
    frames = 0
    with storage.output_path(final) as tmp:
        with (
            open(tmp, "wb") as fh,
            open_tar_writer(fh) as tar,
            DecodeWorker(plan.timeout_s, probe_gpu=plan.backend != "pyav") as worker,
        ):
            for video in plan.videos:
                try:
                    encoded = worker.run(video.path, plan.sampling, plan.fmt, plan.backend)
                except DecodeError as exc:
                    log.warning("%s (%s): %s", video.video_id, video.path, exc)
                    error_rows.append(_error_row(video, exc))
                    index_rows.append(_index_row(video, plan, None))
                    continue
                tar.write(sample_dict(sample_members(video, encoded, plan)))
                frames += len(encoded.jpegs)
                index_rows.append(_index_row(video, plan, encoded))
        size = tmp.stat().st_size
        ok = len(plan.videos) - len(error_rows)
        sidecar = {
            "format_version": FORMAT_VERSION,
            "shard": plan.name,
            "settings_sha256": plan.settings_sha256,
            "videos": [v.video_id for v in plan.videos],
            "videos_ok": ok,
            "videos_failed": len(error_rows),
            "frames": frames,
            "bytes": size,
            "index": index_rows,
            "errors": error_rows,
        }
        # Sidecar first, tar last (when this block ends): a shard counts as done only when
        # both exist, so a crash between the two just means it is written again (same bytes).
        storage.write_bytes(sidecar_path, _canonical_json(sidecar) + b"\n")
    seconds = time.perf_counter() - started
    log.info(
        "%s: %d ok, %d failed, %d frames, %d bytes in %.1f s",
        plan.name,
        ok,
        len(error_rows),
        frames,
        size,
        seconds,
    )
    return ShardResult(
        index=plan.index,
        path=final,
        videos_ok=ok,
        videos_failed=len(error_rows),
        frames=frames,
        bytes=size,
        skipped=False,
        seconds=seconds,
    )


def _index_row(video: PlannedVideo, plan: ShardPlan, encoded: EncodedVideo | None) -> dict:
    return {
        "video_id": video.video_id,
        "key": video.key,
        "shard": plan.name,
        "num_frames": 0 if encoded is None else len(encoded.jpegs),
        "timestamps": [] if encoded is None else [float(t) for t in encoded.timestamps],
        "status": "failed" if encoded is None else "ok",
        "backend": None if encoded is None else _plain(encoded.info.get("backend")),
    }


def _error_row(video: PlannedVideo, exc: DecodeError) -> dict:
    return {
        "video_id": video.video_id,
        "path": video.path,
        "stage": exc.stage,
        "reason": exc.reason,
    }


# --------------------------------------------------------------------------------- finalize


def finalize(out_dir: str | os.PathLike) -> dict:
    """Gather every shard's sidecar into DIR/index.parquet and DIR/errors.parquet.

    Raises IncompleteShardsError (naming the missing shards) unless every planned shard is
    written, so an index never silently lacks videos. Removes temporary files left by killed
    writers. Returns a summary of counts and paths.
    """
    out = storage.absolute(out_dir)
    settings_path = storage.join(out, SETTINGS_FILE)
    if not storage.exists(settings_path):
        raise FileNotFoundError(f"{settings_path} not found: {out} is not a shard directory")
    settings = json.loads(storage.read_text(settings_path))
    num_shards = settings["shards"]
    present = set(storage.list_names(out))
    missing = [
        shard_name(i)
        for i in range(num_shards)
        if shard_name(i) not in present or sidecar_name(i) not in present
    ]
    if missing:
        raise IncompleteShardsError(
            f"{len(missing)} of {num_shards} shards in {out} are not written yet "
            f"({', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}); "
            "run the same shards command again to finish them"
        )
    index_rows: list[dict] = []
    error_rows: list[dict] = []
    totals = {"videos_ok": 0, "videos_failed": 0, "frames": 0, "bytes": 0}
    digest = hashlib.sha256(_canonical_json(settings)).hexdigest()
    for i in range(num_shards):
        sidecar = _read_sidecar(storage.join(out, sidecar_name(i)))
        if sidecar.get("settings_sha256") != digest:
            raise ShardSettingsError(
                f"{shard_name(i)} in {out} was written with other settings than "
                f"{SETTINGS_FILE} holds; the directory mixes two runs"
            )
        index_rows.extend(sidecar["index"])
        error_rows.extend(sidecar["errors"])
        for name in totals:
            totals[name] += sidecar[name]
    index_path, errors_path = storage.join(out, INDEX_FILE), storage.join(out, ERRORS_FILE)
    index = pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)
    storage.write_parquet(index, index_path, compression="zstd")
    storage.write_parquet(pa.Table.from_pylist(error_rows, schema=ERRORS_SCHEMA), errors_path,
                          compression="zstd")
    removed = 0
    if not storage.is_remote(out):  # remote outputs never leave temporaries under DIR
        for leftover in sorted(Path(out).glob(".*.tmp-*")):
            leftover.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary files left by interrupted writers", removed)
    summary = {
        "out_dir": str(out),
        "shards": num_shards,
        "videos": settings["videos"],
        **totals,
        "index": index_path,
        "errors": errors_path,
        "removed_temp_files": removed,
    }
    log.info("finalized %s: %s", out, summary)
    return summary
