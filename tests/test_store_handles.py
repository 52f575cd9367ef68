"""The reader keeps a bounded number of part files open, so a shuffled pass over a store with
more parts than the process may open files still works (issue 10, item 1)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from featstore import StoreWriter, ViewSpec, build_catalog, open_store

VIEWS = {"coarse": ViewSpec(dim=2, backbone="mobilenet_v2", input_size=112),
         "fine": ViewSpec(dim=3, backbone="resnet101", input_size=224)}
PARTS, PER_PART = 96, 2
FD_LIMIT = 64  # below PARTS: keeping every part open cannot pass


def _video(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    t = 1 + i % 5
    return {v: rng.standard_normal((t, s.dim)).astype(np.float16) for v, s in VIEWS.items()}


@pytest.fixture(scope="module")
def many_part_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many_parts")
    for p in range(PARTS):
        with StoreWriter(root, f"shard-{p:06d}", VIEWS) as w:
            for k in range(PER_PART):
                i = p * PER_PART + k
                feats = _video(i)
                w.add_video(f"v{i:05d}", ["a" if i % 2 else "b"], "train",
                            np.arange(len(feats["coarse"]), dtype=float), feats)
    build_catalog(root)
    return root


READ_ALL = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from featstore import open_store
    store_dir, max_open, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = open_store(store_dir, max_open=max_open)
    ids = store.video_ids()
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    sums, most_open = {}, 0
    for epoch in range(2):
        for i in np.random.default_rng(epoch).permutation(len(ids)):
            arrays = store.read_views(ids[i], ["coarse", "fine"])
            sums[ids[i]] = [float(a.astype("f8").sum()) for a in arrays.values()]
            most_open = max(most_open, store.open_parts())
    print(json.dumps({"sums": sums, "most_open": most_open}))
""")


def _read_all(store_dir: Path, max_open: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", READ_ALL, str(store_dir), str(max_open),
                           str(FD_LIMIT)], check=False, capture_output=True, text=True,
                          timeout=120)


def test_shuffled_passes_under_a_low_descriptor_limit(many_part_store):
    done = _read_all(many_part_store, max_open=16)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["most_open"] == 16
    assert len(out["sums"]) == PARTS * PER_PART
    for vid, got in out["sums"].items():
        want = [float(a.astype("f8").sum()) for a in _video(int(vid[1:])).values()]
        assert got == pytest.approx(want)


def test_unbounded_handles_exceed_the_same_limit(many_part_store):
    """The control: with room for every part the same pass runs out of descriptors."""
    done = _read_all(many_part_store, max_open=10_000)
    assert done.returncode != 0
    assert "Too many open files" in done.stderr


def test_eviction_keeps_reads_correct_and_rejects_bad_bound(many_part_store):
    store = open_store(many_part_store, max_open=2)
    ids = store.video_ids()
    for vid in ids[::-1] + ids[:6]:
        np.testing.assert_array_equal(store.read(vid, "fine"), _video(int(vid[1:]))["fine"])
        assert store.open_parts() <= 2
    assert store.part_of(ids[3]) == f"shard-{3 // PER_PART:06d}"
    store.close()
    assert store.open_parts() == 0
    with pytest.raises(ValueError, match="max_open"):
        open_store(many_part_store, max_open=0)


def test_chunked_compressed_parts_read_the_same_as_contiguous_ones(many_part_store, tmp_path):
    """Rows of contiguous parts are read as plain bytes; other layouts go through HDF5."""
    import shutil

    import h5py

    (tmp_path / "parts").mkdir()
    for p in ("shard-000000", "shard-000001"):
        shutil.copy(many_part_store / "parts" / f"{p}.h5", tmp_path / "parts" / f"{p}.h5")
    with h5py.File(tmp_path / "parts" / "shard-000001.h5", "r+") as f:
        for view in VIEWS:
            name = f"views/{view}/features"
            data, attrs = f[name][()], dict(f[name].attrs)
            del f[name]
            f.create_dataset(name, data=data, chunks=(2, data.shape[1]), compression="gzip")
            f[name].attrs.update(attrs)
    build_catalog(tmp_path)
    copy, original = open_store(tmp_path), open_store(many_part_store)
    assert copy.video_ids() == [f"v{i:05d}" for i in range(2 * PER_PART)]
    for vid in copy.video_ids():
        for view in VIEWS:
            np.testing.assert_array_equal(copy.read(vid, view), original.read(vid, view))
