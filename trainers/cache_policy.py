"""Whether the trainers keep features in memory: the bytes a run would cache against a budget.

`--cache on` keeps every video read (float16) for later epochs, `off` reads the store every
epoch, `auto` (the default) caches only when the features the run reads fit in `--cache-gb`,
by default half of the memory this process can still use (MemAvailable, or the cgroup's
memory limit less its usage when that is lower). At FCVID scale with real widths the train split alone is ~51 GB,
so caching by default would run a workstation out of memory in the first epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "on", "off")
DEFAULT_RAM_FRACTION = 0.5
FLOAT16_BYTES = 2
GB = 1e9


def available_memory_bytes(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> int:
    """Memory this process can still allocate: MemAvailable, capped by a cgroup limit (v2 or
    v1; v1 reports 'no limit' as a huge number, which the comparison with MemAvailable skips)."""
    avail = _meminfo_available(Path(proc) / "meminfo")
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, used_file in (("memory.max", "memory.current"),  # cgroup v2
                                  ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(Path(cgroup) / limit_file)
        if limit is not None and limit < avail:
            used = _read_int(Path(cgroup) / used_file) or 0
            avail = min(avail, max(limit - used, 0))
    return int(avail)


def _meminfo_available(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_int(path: Path) -> int | None:
    """An integer file such as memory.max; None when absent or 'max' (no limit)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def feature_bytes(store, views: Sequence[str], splits: Sequence[str | None],
                  with_stages: bool) -> int:
    """Bytes of float16 features (and stage features) of `views` over the videos of `splits`."""
    width = 0
    for v in views:
        width += int(store.view_attrs(v)["dim"])
        if with_stages:
            width += sum(store.stage_dims(v).values())
    ids = set()
    for split in splits:
        ids.update(store.video_ids(split))
    frames = sum(store.num_frames(v) for v in ids)
    return frames * width * FLOAT16_BYTES


def choose_cache(mode: str, need_bytes: int, budget_gb: float | None = None) -> bool:
    """Decide (and log why) whether to cache `need_bytes` of features under `mode`."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {list(CACHE_MODES)}, got {mode!r}")
    need = f"{need_bytes / GB:.2f} GB"
    if mode != "auto":
        log.info("feature cache %s (--cache %s; the run reads %s of features)", mode, mode, need)
        return mode == "on"
    if budget_gb is None:
        budget = DEFAULT_RAM_FRACTION * available_memory_bytes()
        source = f"{DEFAULT_RAM_FRACTION:.0%} of available memory"
    else:
        budget, source = budget_gb * GB, "--cache-gb"
    use = need_bytes <= budget
    log.info("feature cache %s (auto): the run reads %s of features, budget %.2f GB (%s)",
             "on" if use else "off", need, budget / GB, source)
    return use
