"""Feature extraction as a pipeline: CPU decode tasks -> a pool of long-lived backbone actors
-> one CPU writer task per part.

Why actors managed here rather than Ray Data `map_batches` with a callable class: the output
contract is one atomic part per shard, resumable per part, with every frame of a shard in the
order the shard stores it. Ray Data re-blocks rows across inputs and owns ordering, retries and
progress, so the per-shard bookkeeping would have to be rebuilt on top of it anyway; with actors
the driver keeps an explicit, bounded queue and knows which shard every batch belongs to.

* Decode: one streaming CPU task per shard (`decode_chunks`) reads its tar (for `c2f build`,
  first writes it, decoding the videos once) and yields fixed-size batches of `batch_size`
  frames that span videos, so 16-frame videos still make full batches: with the Pillow JPEG
  decoder, frames decoded and preprocessed per view; with DALI (`--jpeg-decoder`: dali-mixed
  on CUDA, dali-cpu on CPU) the JPEG bytes themselves, which the backbone worker decodes
  (nvJPEG on its GPU for dali-mixed) and preprocesses in torch where the frames lie; JPEGs
  are also ~10x smaller to ship than float32 frames. Ray's generator backpressure bounds
  what one task holds, so memory does not grow with video or shard length.
* Backbones: `pool_size` actors (`FeatureWorker`) each build every view's model once, on the
  GPU Ray assigned to them for life (`num_gpus`, fractional allowed), and run batches.
  At most `prefetch` batches wait per actor, the next one already delivered while the current
  one runs; the driver stops reading decoders when that bound is reached (backpressure).
* Videos on the workers (`video_decode="workers"`, `c2f build` with the DALI backend on a
  GPU): each worker writes up to `decode_ahead` shards at once itself, decoding the videos
  with DALI `mixed` (NVDEC) on its own GPU, in threads of their own (a Ray concurrency group)
  so its batches keep running meanwhile; the decode task then only reads the finished tar. A CPU decode task hides every
  GPU from its decoder (it reserved none), so there `auto` decodes with PyAV.
* Streaming: `decode_ahead` shards per worker are decoded at once, so shard k+1 is decoded
  while shard k is on the actors, and more workers get more decoders.
* Writing: when a shard's last batch is back, a CPU task writes its part (same writer as the
  in-process path) under a temporary name and renames it.

Failures: attempts are counted per shard by the driver (`PoolRun`): a shard whose code raised
fails at once; one that lost a worker, its node or an object starts again from decoding, at most
`max_retries` times, then is failed with the reason; the run goes on. Finished parts are
skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.executor import RunError, TaskFailure, connect
from cluster.progress import PipelineCounts
from cluster.resources import ClusterResourceError, TaskResources, check_fits

log = logging.getLogger(__name__)
POLL_S = 10.0  # longest wait for any event before saying what the run waits for
PROBE_RETRIES = 3  # Ray's retries of a probe of a restarting worker (each waits for the restart)


@dataclass(frozen=True)
class PoolSettings:
    """Sizes of the pipeline: actors, what each reserves, prefetch and decode-ahead depth."""

    pool_size: int = 1
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    decode_cpus: float = 1.0
    prefetch: int = 2
    decode_ahead: int = 2  # per worker
    max_retries: int = 3
    stall_s: float = 600.0  # nothing finished for this long: restart the shards in progress
    video_decode: str = "tasks"  # where `c2f build` decodes videos: "tasks" or "workers"

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.prefetch < 1 or self.decode_ahead < 1:
            raise ValueError(f"pool_size, prefetch and decode_ahead must be >= 1: {self}")
        if self.video_decode not in VIDEO_DECODE_SITES:
            raise ValueError(f"video_decode must be one of {VIDEO_DECODE_SITES}, "
                             f"got {self.video_decode!r}")


VIDEO_DECODE_SITES = ("tasks", "workers")


def video_decode_site(choice: str, backend: str, device: str) -> str:
    """Where a pool build decodes its videos. `auto`: on the backbone workers when DALI is
    asked for, or may be chosen (`auto` backend) where the workers hold GPUs, since only they
    reserved a GPU for NVDEC; on CPU decode tasks otherwise."""
    if choice != "auto":
        if choice not in VIDEO_DECODE_SITES:
            raise ValueError(f"video decode site must be auto or one of {VIDEO_DECODE_SITES}, "
                             f"got {choice!r}")
        return choice
    return "workers" if backend == "dali" or (backend == "auto" and device == "cuda") \
        else "tasks"


@dataclass
class FrameBatch:
    """Up to batch_size frames of one shard, and whose they are: `spans` (video position in the
    shard, frames) in order; `videos` the (key, meta) of the videos that start in this batch.
    The frames are either preprocessed per view (`inputs`) or JPEG bytes for the worker to
    decode with DALI (`jpegs`)."""

    chunk: int
    inputs: dict[str, np.ndarray]
    spans: list[tuple[int, int]]
    videos: list[tuple[int, str, dict]] = field(default_factory=list)
    jpegs: list[bytes] | None = None


@dataclass
class BatchOutputs:
    """A FrameBatch after the backbones: per view {features|logits|stage: float32 array}."""

    chunk: int
    outputs: dict[str, dict[str, np.ndarray]]
    spans: list[tuple[int, int]]
    videos: list[tuple[int, str, dict]]


# ---------------------------------------------------------------------------- decode (CPU)


def _shard_samples(plan: Any, decode_frames: bool) -> tuple[Any, Iterator]:
    """(extract plan, samples) of an ExtractPlan, or of a BuildPlan after writing its shard."""
    from pipeline.reader import iter_shard
    from pipeline.shards import write_shard

    extract = getattr(plan, "extract", plan)
    if extract is not plan:
        write_shard(plan.shard)
    return extract, iter_shard(extract.shard, decode_frames=decode_frames)


def batches_of_shard(plan: Any) -> Iterator[FrameBatch]:
    """Fixed-size batches of a shard's frames, spanning videos: preprocessed for every view,
    or as JPEG bytes when the plan's JPEG decoder is DALI's (the worker decodes them)."""
    from pipeline.preprocess import preprocess_frames, view_preprocess

    dali = getattr(plan, "extract", plan).jpeg_decoder != "pillow"
    extract, samples = _shard_samples(plan, decode_frames=not dali)
    size = extract.batch_size
    preps = {v.name: view_preprocess(v.input_size) for v in extract.views}
    pending: list = []
    spans: list[tuple[int, int]] = []
    videos: list[tuple[int, str, dict]] = []
    chunk = 0

    def flush() -> FrameBatch:
        nonlocal pending, spans, videos, chunk
        if dali:
            batch = FrameBatch(chunk, {}, spans, videos, jpegs=pending)
        else:
            batch = FrameBatch(
                chunk,
                {name: preprocess_frames(pending, pp) for name, pp in preps.items()},
                spans,
                videos,
            )
        pending, spans, videos, chunk = [], [], [], chunk + 1
        return batch

    for position, sample in enumerate(samples):
        frames = list(sample.jpegs if dali else sample.frames or [])
        if not frames:
            log.warning("%s: video %s has no frames; left out", extract.part, sample.key)
            continue
        videos.append((position, sample.key, dict(sample.meta)))
        start = 0
        while start < len(frames):
            take = frames[start : start + size - len(pending)]
            pending.extend(take)
            spans.append((position, len(take)))
            start += len(take)
            if len(pending) == size:
                yield flush()
    if pending:
        yield flush()


def decode_chunks(plan: Any) -> Iterator[FrameBatch]:
    """The body of the streaming decode task (one per shard)."""
    import torch

    from pipeline.devices import hide_gpus

    hide_gpus()  # this task reserved no GPU: its video decoder must not use one
    extract = getattr(plan, "extract", plan)
    if extract.threads:
        torch.set_num_threads(extract.threads)
    yield from batches_of_shard(plan)


# ------------------------------------------------------------------------- backbones (GPU)


class FeatureWorker:
    """Builds each view's backbone once, on the device Ray assigned, and runs batches; with
    videos decoded on the workers, also writes shards (`write_shard`, in its own thread).

    `stats()` reports model builds, batches, frames it decoded from JPEG itself, videos it
    decoded, seconds busy and seconds waiting for input (the gap between finishing one batch
    and starting the next), from this actor's own clock.
    """

    def __init__(self, views: tuple, device: str, dtype: str, threads: int = 0,
                 jpeg_decoder: str = "pillow", batch_size: int = 64) -> None:
        import torch

        from pipeline.devices import visible_gpu_ids, worker_device
        from pipeline.extract import load_view

        if threads:
            torch.set_num_threads(threads)
        self.device = worker_device(device)
        self.dtype = dtype
        self.jpeg_decoder = jpeg_decoder
        self.batch_size = batch_size
        self.threads = threads
        self.gpu_ids = visible_gpu_ids()
        self.loaded = [load_view(v, self.device) for v in views]
        self.builds = len(self.loaded)
        self.batches = 0
        self.jpegs = 0  # frames this worker decoded from JPEG itself (DALI)
        self.videos = 0  # videos this worker decoded into shards itself
        self.video_s = 0.0
        self.busy_s = 0.0
        self.wait_s = 0.0
        self._last_end: float | None = None

    def layout(self) -> dict:
        """The part layout, recording the JPEG decoder this worker uses."""
        from pipeline.extract import view_layout

        return view_layout(self.loaded, self.jpeg_decoder)

    def _inputs(self, batch: FrameBatch) -> dict[str, Any]:
        """Each view's preprocessed batch as a torch tensor: as sent, or decoded here by DALI
        from JPEG bytes (on this worker's GPU for dali-mixed) and preprocessed in torch."""
        import torch

        from pipeline.jpeg_dali import dali_jpeg_decoder
        from pipeline.preprocess import preprocess_tensors, view_preprocess

        if batch.jpegs is None:
            # Arrays arrive read-only from the object store; torch wants writable memory.
            return {lv.view.name: torch.from_numpy(
                np.require(batch.inputs[lv.view.name], requirements="W")) for lv in self.loaded}
        decoder = dali_jpeg_decoder("mixed" if self.jpeg_decoder == "dali-mixed" else "cpu",
                                    self.batch_size, self.threads or 1)
        images = decoder.decode(batch.jpegs)
        self.jpegs += len(images)
        return {lv.view.name: preprocess_tensors(images, view_preprocess(lv.view.input_size))
                for lv in self.loaded}

    def forward(self, batch: FrameBatch) -> tuple[BatchOutputs, int]:
        """The batch's outputs, and its frame count (a second, tiny return the driver reads
        for progress while the outputs go to the writer)."""
        from pipeline.extract import forward_batch

        started = time.perf_counter()
        if self._last_end is not None:
            self.wait_s += started - self._last_end
        inputs = self._inputs(batch)  # JPEG decoding here counts as busy: it is this stage's
        outputs = {lv.view.name: forward_batch(lv, inputs[lv.view.name], self.dtype, self.device)
                   for lv in self.loaded}
        self._last_end = time.perf_counter()
        self.busy_s += self._last_end - started
        self.batches += 1
        frames = sum(count for _, count in batch.spans)
        return BatchOutputs(batch.chunk, outputs, batch.spans, batch.videos), frames

    def write_shard(self, plan: Any) -> Any:
        """Write one shard, its videos decoded by a child process that inherits this worker's
        CUDA_VISIBLE_DEVICES: DALI `mixed` decodes on the GPU Ray gave this worker. Called in
        the "videos" concurrency group, beside the batches."""
        from pipeline.shards import write_shard

        result = write_shard(plan)
        if not result.skipped:
            self.videos += result.videos_ok + result.videos_failed
            self.video_s += result.seconds
        return result

    def stats(self) -> dict:
        return {"builds": self.builds, "batches": self.batches, "jpegs": self.jpegs,
                "jpeg_decoder": self.jpeg_decoder, "busy_s": self.busy_s,
                "wait_s": self.wait_s, "gpu_ids": self.gpu_ids, "device": self.device,
                "videos": self.videos, "video_s": self.video_s}


# ----------------------------------------------------------------------------- write (CPU)


def write_part(plan: Any, layout: dict, started: float, *outputs: BatchOutputs) -> Any:
    """Split a shard's batch outputs back into videos and write the part atomically.

    The outputs arrive as task arguments (refs resolved by Ray, so they travel from the actors
    straight here, not through the driver); a batch that failed or was lost with its node fails
    this task before it starts, and the driver decides whether that is worth another attempt."""
    from pipeline.devices import visible_gpu_ids
    from pipeline.extract import (
        ExtractResult,
        add_video_outputs,
        finished_part,
        open_part_writer,
    )

    extract = getattr(plan, "extract", plan)
    done = finished_part(extract, time.perf_counter())
    if done is not None:  # an earlier attempt (restarted after a stall) finished it
        return done
    ordered = sorted(outputs, key=lambda o: o.chunk)
    videos = {pos: (key, meta) for o in ordered for pos, key, meta in o.videos}
    pieces: dict[int, list[tuple[BatchOutputs, int, int]]] = {}
    for o in ordered:
        offset = 0
        for pos, count in o.spans:
            pieces.setdefault(pos, []).append((o, offset, count))
            offset += count
    first = videos[min(videos)][1] if videos else None
    frames = 0
    with open_part_writer(extract, layout, first) as writer:
        for pos in sorted(pieces):
            key, meta = videos[pos]
            outs = {
                view: {
                    name: np.concatenate([o.outputs[view][name][a : a + n] for o, a, n in parts])
                    for name in parts[0][0].outputs[view]
                }
                for view in layout
                for parts in [pieces[pos]]
            }
            count = sum(n for _, _, n in pieces[pos])
            add_video_outputs(writer, key, meta, count, outs)
            frames += count
    return ExtractResult(extract.index, extract.part, len(pieces), frames, False,
                         time.time() - started, extract.device, visible_gpu_ids())


# ---------------------------------------------------------------------------------- driver


def system_failure(ray: Any, exc: BaseException) -> bool:
    """True when `exc` is Ray's, not the plan's: a dead worker or actor, a lost node or object,
    also when it reached a later stage as an argument (wrapped in a RayTaskError). Such a
    failure is worth another attempt; an exception the code raised would recur."""
    while isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if not isinstance(cause, ray.exceptions.RayError):
            return False
        exc = cause
    return isinstance(exc, ray.exceptions.RayError)


@dataclass
class _Shard:
    """A shard's progress through the pipeline in its current attempt."""

    position: int
    plan: Any
    started: float
    generator: Any = None
    decoded: bool = False
    on_workers: int = 0  # batches sent to a worker and not back yet
    outputs: list = field(default_factory=list)
    failed: str | None = None
    decode_error: Exception | None = None
    restarts: int = 0
    writer: int | None = None  # the worker that writes this shard (videos decoded there)

    @property
    def name(self) -> str:
        return getattr(self.plan, "extract", self.plan).part

    def reset(self) -> None:
        """Forget the current attempt's work: the shard starts again from decoding."""
        self.generator, self.decoded, self.on_workers, self.outputs = None, False, 0, []
        self.decode_error, self.writer = None, None


class PoolRun:
    """One run of plans through the pipeline; `run()` returns results in plan order.

    Retries are the driver's, per shard, not Ray's: decode tasks, worker calls and writer tasks
    are not retried by Ray (an actor is restarted, its calls in flight fail). A shard whose
    stage failed for a system reason (`system_failure`) starts again from decoding, at most
    `max_retries` times; one whose code raised fails at once. Ray's own re-execution is kept
    out because it hung under node loss: a lost batch was rebuilt by re-running its streaming
    decode task, which then waited under generator backpressure for a consumer that had
    already taken those items.
    """

    def __init__(self, plans: Sequence[Any], settings: PoolSettings,
                 on_result: Callable[[Any], None] | None = None,
                 counts: PipelineCounts | None = None,
                 on_tick: Callable[[], None] | None = None) -> None:
        import ray

        self.ray = ray
        self.plans = list(plans)
        self.settings = settings
        self.on_result = on_result
        self.results: list[Any] = [None] * len(self.plans)
        self.failures: list[TaskFailure] = []
        self.worker_stats: list[dict] = []
        self.counts = counts if counts is not None else PipelineCounts()
        self.on_tick = on_tick
        self._actors: list = []
        self._probes: dict[int, Any] = {}  # worker -> its probe, while it may not answer
        first = getattr(self.plans[0], "extract", self.plans[0])
        self.first = first
        s = settings
        self._decode = ray.remote(
            num_cpus=s.decode_cpus, num_returns="streaming", max_retries=0,
            _generator_backpressure_num_objects=s.prefetch,
        )(decode_chunks)
        self._write = ray.remote(num_cpus=1, max_retries=0)(write_part)
        # max_restarts=-1: a worker lost with its node comes back (models rebuilt) for the
        # shards still to do; the attempts that are bounded are each shard's.
        # The "videos" group: a worker writing shards keeps running batches in its default
        # group (one at a time) meanwhile.
        actor = ray.remote(num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker,
                           max_restarts=-1, max_task_retries=0,
                           concurrency_groups={"videos": s.decode_ahead})
        self._actor_class = actor(FeatureWorker)

    def run(self) -> list[Any]:
        from pipeline.extract import finished_part

        ray, s = self.ray, self.settings
        total = ray.cluster_resources()
        check_fits(total, ray.available_resources(),
                   TaskResources(s.cpus_per_worker, s.gpus_per_worker))
        left = float(total.get("CPU", 0.0)) - s.pool_size * s.cpus_per_worker
        if left < max(s.decode_cpus, 1.0) - 1e-9:
            # Actors hold their CPUs for life: without one left over, no decode task could
            # ever start and the run would wait forever.
            raise ClusterResourceError(
                f"{s.pool_size} workers x {s.cpus_per_worker:g} CPUs leave {left:g} of the "
                f"cluster's {total.get('CPU', 0):g} CPUs for decoding and writing, which need "
                f"{max(s.decode_cpus, 1.0):g}: use fewer or smaller workers")
        todo: list[_Shard] = []
        for i, plan in enumerate(self.plans):
            done = finished_part(getattr(plan, "extract", plan), time.perf_counter())
            if done is not None:
                self._finish(i, done)
            else:
                todo.append(_Shard(i, plan, time.time()))
        if todo:
            self._pipeline(todo)
        if self.failures:
            raise RunError(self.failures, self.results)
        return self.results

    def _finish(self, position: int, result: Any) -> None:
        self.results[position] = result
        if self.on_result is not None:
            self.on_result(result)

    def _fail(self, shard: _Shard, reason: str, died: bool) -> None:
        if shard.failed is None:
            shard.failed = reason
            self.failures.append(TaskFailure(shard.position, shard.plan, reason,
                                             shard.restarts + 1, died))
            log.error("%s failed: %s", shard.name, reason)

    def _retry(self, shard: _Shard, reason: str, queue: list[_Shard]) -> None:
        """Start a shard again from decoding, or fail it once its attempts are spent."""
        if shard.restarts >= self.settings.max_retries:
            self._fail(shard, reason, True)
            return
        shard.restarts += 1
        log.warning("%s: attempt %d of %d after: %s", shard.name, shard.restarts + 1,
                    self.settings.max_retries + 1, reason)
        shard.reset()
        queue.insert(0, shard)

    def _layout(self, actors: list) -> dict:
        """The store layout from a worker's models; a worker lost meanwhile is waited for."""
        ray, attempts = self.ray, 0
        while True:
            try:
                return ray.get(actors[0].layout.remote(), timeout=self.settings.stall_s)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
                attempts += 1
                if not system_failure(ray, exc) or attempts > self.settings.max_retries:
                    raise
                log.warning("backbone worker lost before its first batch (%s); waiting", exc)

    def _pipeline(self, todo: list[_Shard]) -> None:
        ray, s = self.ray, self.settings
        actors = [self._new_worker() for _ in range(s.pool_size)]
        layout = self._layout(actors)
        load = {i: 0 for i in range(len(actors))}
        self._actors, self._probes = actors, {}
        queue = list(todo)
        decoding: dict[Any, _Shard] = {}  # streaming decode tasks, and shards on workers
        inflight: dict[Any, tuple[_Shard, int, Any]] = {}
        writing: dict[Any, _Shard] = {}
        capacity = s.prefetch * len(actors)
        last_event = time.monotonic()
        try:
            while queue or decoding or inflight or writing:
                self._count(decoding, inflight, writing)
                answering = [i for i in range(len(actors)) if i not in self._probes]
                while queue and len(decoding) < s.decode_ahead * len(actors) and \
                        self._start_decoding(queue[0], actors, decoding, answering):
                    queue.pop(0)
                waitables = list(inflight) + list(writing) + list(self._probes.values())
                waitables += [r for r, x in decoding.items() if x.generator is not r]
                if len(inflight) < capacity and answering:
                    waitables += [r for r, x in decoding.items() if x.generator is r]
                # fetch_local=False: outputs go from the workers to the writer tasks; the
                # driver only needs to know they exist.
                ready, _ = ray.wait(waitables, num_returns=1, timeout=POLL_S,
                                    fetch_local=False)
                if not ready:  # a stall (e.g. waiting for a new node) says so
                    log.info("waiting: %d shard(s) decoding, %d batch(es) on workers, %d "
                             "part(s) writing", len(decoding), len(inflight), len(writing))
                    if time.monotonic() - last_event > s.stall_s:
                        actors = self._restart(actors, queue, decoding, inflight, writing)
                        load = {i: 0 for i in range(len(actors))}
                        self._actors, self._probes = actors, {}
                        last_event = time.monotonic()
                    continue
                last_event = time.monotonic()
                for ref in ready:
                    if ref in self._probes.values():
                        self._probed(ref)
                        continue
                    if ref in decoding and decoding[ref].generator is not ref:
                        self._shard_written(decoding, ref, queue)
                        continue
                    if ref in decoding:
                        shard = self._next_batch(decoding, ref, actors, load, inflight)
                    elif ref in inflight:
                        shard, actor, frames = inflight.pop(ref)
                        load[actor] -= 1
                        shard.on_workers -= 1
                        shard.outputs.append(ref)  # errors surface in its writer task
                        self._counted(frames)
                    else:
                        shard = writing.pop(ref)
                        self._written(shard, ref, queue)
                        continue
                    if shard.decoded and not shard.on_workers:
                        if shard.decode_error is not None:  # reported by the generator itself
                            self._failed(shard, shard.decode_error, queue)
                        else:
                            writing[self._write.remote(shard.plan, layout, shard.started,
                                                       *shard.outputs)] = shard
            self._count(decoding, inflight, writing)
            self.worker_stats = self._stats(actors)
        finally:
            for a in actors:
                ray.kill(a)

    def _start_decoding(self, shard: _Shard, actors: list, decoding: dict,
                        answering: list[int]) -> bool:
        """Start a decode task for the shard; for a build whose videos the workers decode,
        first the shard's write on the answering worker writing the fewest (False, nothing
        started, when no worker answers now)."""
        if self.settings.video_decode == "workers" and hasattr(shard.plan, "shard"):
            if not answering:
                return False
            busy = {i: sum(1 for x in decoding.values() if x.writer == i and x.generator is None)
                    for i in answering}
            shard.writer = min(busy, key=busy.get)
            ref = actors[shard.writer].write_shard.options(
                concurrency_group="videos").remote(shard.plan.shard)
            decoding[ref] = shard
            return True
        shard.generator = self._decode.remote(shard.plan)
        decoding[shard.generator] = shard
        return True

    def _hold_workers(self) -> None:
        """After a failure of Ray's own, send no work to a worker until it answers: a worker
        that is restarting (its node lost) fails every call at once, which would spend a
        shard's attempts in seconds. The probe waits for the restart (Ray retries it then)."""
        for i, actor in enumerate(self._actors):
            if i not in self._probes:
                self._probes[i] = actor.stats.options(max_task_retries=PROBE_RETRIES).remote()

    def _probed(self, ref: Any) -> None:
        """A probe came back: its worker takes work again, or is asked again a second later."""
        i = next(i for i, r in self._probes.items() if r == ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            log.warning("worker %d does not answer yet (%s); asking again", i,
                        str(exc).strip().splitlines()[-1])
            time.sleep(1.0)
            self._probes[i] = self._actors[i].stats.options(
                max_task_retries=PROBE_RETRIES).remote()
            return
        del self._probes[i]

    def _shard_written(self, decoding: dict, ref: Any, queue: list[_Shard]) -> None:
        """A worker finished writing a shard: stream its batches from the tar, or count the
        attempt when the worker was lost meanwhile."""
        shard = decoding.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self._failed(shard, exc, queue)
            return
        shard.generator = self._decode.remote(shard.plan.extract)
        decoding[shard.generator] = shard

    def _written(self, shard: _Shard, ref: Any, queue: list[_Shard]) -> None:
        ray = self.ray
        try:
            self._finish(shard.position, ray.get(ref))
        except ray.exceptions.RayError as exc:
            self._failed(shard, exc, queue)

    def _failed(self, shard: _Shard, exc: Exception, queue: list[_Shard]) -> None:
        """Another attempt for Ray's failures (once the workers answer), none for the code's
        own."""
        if system_failure(self.ray, exc):
            self._hold_workers()
            self._retry(shard, str(exc).strip().splitlines()[-1], queue)
        else:
            self._fail(shard, str(exc), False)

    def _stats(self, actors: list) -> list[dict]:
        """Each worker's stats; a worker that does not answer in time is left out (logged)."""
        ray, stats = self.ray, []
        for i, a in enumerate(actors):
            try:
                stats.append(ray.get(a.stats.remote(), timeout=POLL_S))
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
                log.warning("worker %d gave no stats: %s", i, exc)
        return stats

    def _restart(self, actors, queue, decoding, inflight, writing) -> list:
        """Start the shards in progress again with fresh workers, after nothing finished for
        `stall_s` (a guard against hangs not seen in tests; a node loss is handled without
        it). Parts already written are kept; each restart counts as an attempt of every shard
        in progress."""
        ray, s = self.ray, self.settings
        stalled = list({id(x): x for x in [*decoding.values(), *writing.values(),
                                            *(v[0] for v in inflight.values())]}.values())
        log.warning("nothing finished for %.0f s: restarting %d shard(s) and the workers",
                    s.stall_s, len(stalled))
        for ref in [*decoding, *inflight, *writing]:
            try:
                ray.cancel(ref, force=True)
            except (TypeError, ValueError, ray.exceptions.RayError) as exc:
                log.debug("cancel failed: %s", exc)
        for a in actors:
            ray.kill(a)
        decoding.clear(), inflight.clear(), writing.clear()
        for shard in sorted(stalled, key=lambda x: x.position, reverse=True):
            self._retry(shard, f"no progress for {s.stall_s:g} s", queue)
        return [self._new_worker() for _ in range(len(actors))]

    def _new_worker(self) -> Any:
        f = self.first
        return self._actor_class.remote(f.views, f.device, f.dtype, f.threads, f.jpeg_decoder,
                                        f.batch_size)

    def _count(self, decoding: dict, inflight: dict, writing: dict) -> None:
        """Refresh what each stage holds now, then let the progress display look."""
        c = self.counts
        c.decoding, c.queued, c.writing = len(decoding), len(inflight), len(writing)
        if self.on_tick is not None:
            self.on_tick()

    def _counted(self, frames_ref: Any) -> None:
        """A batch came back from a worker: count it and its frames (a failed one's error
        surfaces in its writer task, not here)."""
        self.counts.batches += 1
        try:
            self.counts.frames += self.ray.get(frames_ref, timeout=POLL_S)
        except (self.ray.exceptions.RayError, self.ray.exceptions.GetTimeoutError):
            pass

    def _next_batch(self, decoding, gen, actors, load, inflight) -> _Shard:
        """Hand the decoder's next batch to the least loaded worker; at the end of its
        batches, mark the shard decoded."""
        shard = decoding[gen]
        try:
            ref = next(gen)
        except StopIteration:
            shard.decoded = True
            del decoding[gen]
            return shard
        except self.ray.exceptions.RayError as exc:  # usually an error ref instead; both count
            shard.decoded, shard.decode_error = True, exc
            del decoding[gen]
            return shard
        self.counts.decoded += 1
        actor = min((i for i in load if i not in self._probes), key=load.get)
        load[actor] += 1
        shard.on_workers += 1
        outputs, frames = actors[actor].forward.options(num_returns=2).remote(ref)
        inflight[outputs] = (shard, actor, frames)
        return shard


def run_pool(plans: Sequence[Any], settings: PoolSettings, *, mode: str = "local",
             address: str | None = None, on_result: Callable[[Any], None] | None = None,
             stats: list | None = None, counts: PipelineCounts | None = None,
             on_tick: Callable[[], None] | None = None) -> list[Any]:
    """Run extract (or build) plans through the pipeline; RunError if any shard failed.

    `on_result` gets each finished part's result; `counts`, when given, is kept up to date
    with what each stage did and holds, and `on_tick()` is called whenever it may have moved
    (e.g. `Progress.tick`); `stats` receives each actor's `FeatureWorker.stats()` at the end.
    """
    import ray

    if not plans:
        return []
    started = connect(mode, address)
    try:
        run = PoolRun(plans, settings, on_result, counts, on_tick)
        try:
            return run.run()
        finally:
            if stats is not None:
                stats.extend(run.worker_stats)
    finally:
        if started:
            ray.shutdown()
