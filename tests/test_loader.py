"""The trainers' loader for stores larger than RAM: part-local seeded shuffle, background
prefetch that changes nothing about the batches, and the automatic cache decision."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch

from featstore import open_store
from trainers.cache_policy import available_memory_bytes, choose_cache, feature_bytes
from trainers.data import block_shuffle, make_loader
from trainers.prefetch import background
from trainers.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_synthetic_store(tmp_path_factory.mktemp("loader") / "store", videos=48,
                                classes=4, frames=(5, 9), seed=3)
    return open_store(path)


def _flat(batches) -> list:
    return [(b.video_ids, {v: x.numpy() for v, x in b.features.items()}, b.lengths.numpy(),
             b.targets.numpy(), {v: {s: x.numpy() for s, x in st.items()}
                                 for v, st in b.stages.items()}) for b in batches]


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ids_a, f_a, n_a, t_a, s_a), (ids_b, f_b, n_b, t_b, s_b) in zip(a, b):
        assert ids_a == ids_b
        for v in f_a:
            np.testing.assert_array_equal(f_a[v], f_b[v])
        for v in s_a:
            for s in s_a[v]:
                np.testing.assert_array_equal(s_a[v][s], s_b[v][s])
        np.testing.assert_array_equal(n_a, n_b)
        np.testing.assert_array_equal(t_a, t_b)


def test_prefetching_loader_yields_the_plain_loaders_batches(store):
    views = ["coarse", "fine"]
    plain = make_loader(store, views, "train", 5, True, seed=11, with_stages=True, prefetch=0)
    ahead = make_loader(store, views, "train", 5, True, seed=11, with_stages=True, prefetch=3)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        ahead.set_epoch(epoch)
        _assert_same(_flat(plain), _flat(ahead))
    ahead.set_epoch(0)
    first = _flat(ahead)
    ahead.set_epoch(1)
    second = [b[0] for b in _flat(ahead)]
    assert [b[0] for b in first] != second  # epochs differ ...
    ahead.set_epoch(1)
    assert [b[0] for b in _flat(ahead)] == second  # ... and a resumed epoch repeats its order
    ids = [v for b in first for v in b[0]]
    assert sorted(ids) == sorted(store.video_ids("train"))


def test_block_shuffle_reads_parts_in_blocks_and_is_seeded():
    parts = [f"p{i % 5}" for i in range(53)]
    order = block_shuffle(parts, 4, np.random.default_rng([1, 0]))
    assert sorted(order.tolist()) == list(range(53))
    np.testing.assert_array_equal(order, block_shuffle(parts, 4, np.random.default_rng([1, 0])))
    assert not np.array_equal(order, block_shuffle(parts, 4, np.random.default_rng([1, 1])))
    runs, start = [], 0  # maximal stretches of one part in the order
    for k in range(1, len(order) + 1):
        if k == len(order) or parts[order[k]] != parts[order[start]]:
            runs.append(k - start)
            start = k
    assert len(runs) <= 5 * 3  # 53 videos in 5 parts make 15 blocks of at most 4
    plain = block_shuffle(parts, 1, np.random.default_rng(0))
    assert sorted(plain.tolist()) == list(range(53))


def test_background_passes_errors_and_stops_when_abandoned():
    def failing():
        yield 1
        raise RuntimeError("bad part")

    it = background(failing(), 2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="bad part"):
        next(it)
    before = threading.active_count()
    endless = background(iter(int, 1), 2)  # never ends by itself
    assert next(endless) == 0
    endless.close()
    assert threading.active_count() == before
    chained = background(background(iter(int, 1), 2), 2)  # two stages, as the loader's
    assert next(chained) == 0
    chained.close()
    assert threading.active_count() == before
    with pytest.raises(ValueError):
        background([], 0)


def test_cache_auto_follows_the_budget_and_says_so(store, caplog):
    need = feature_bytes(store, ["coarse"], ["train", "val"], with_stages=False)
    frames = sum(store.num_frames(v) for v in store.video_ids("train") + store.video_ids("val"))
    assert need == frames * store.view_attrs("coarse")["dim"] * 2
    fine = store.view_attrs("fine")
    assert feature_bytes(store, ["fine"], [None], True) == 2 * (fine["dim"] + sum(
        store.stage_dims("fine").values())) * sum(store.num_frames(v) for v in store.video_ids())
    caplog.set_level(logging.INFO, logger="trainers.cache_policy")
    assert choose_cache("auto", need, budget_gb=2 * need / 1e9) is True
    assert choose_cache("auto", need, budget_gb=0.5 * need / 1e9) is False
    assert "feature cache on (auto)" in caplog.text and "feature cache off (auto)" in caplog.text
    assert choose_cache("auto", 10**6) is True  # 1 MB fits in half of the available memory
    assert choose_cache("auto", 4 * available_memory_bytes()) is False
    assert choose_cache("on", 10**15) is True and choose_cache("off", 1) is False
    with pytest.raises(ValueError, match="cache"):
        choose_cache("yes", 1)


def test_train_logs_the_cache_choice(store, tmp_path, caplog):
    from trainers.config import resolve_config
    from trainers.train import train

    caplog.set_level(logging.INFO, logger="trainers.cache_policy")
    cfg = resolve_config("uniform", None, ["view=coarse"], store=str(store.path),
                         out=str(tmp_path / "run"), epochs=1, batch_size=16, cache_gb=1e-9)
    train(cfg, stop_after_epochs=0)  # loaders are built, no epoch runs
    assert "feature cache off (auto)" in caplog.text and "--cache-gb" in caplog.text
    assert torch.get_num_threads() == 1  # OMP_NUM_THREADS=1 from conftest
