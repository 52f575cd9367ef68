"""Sample keys from hostile video ids: safe, bounded, unique, and harmless when a shard is
extracted with `tar x`. The end-to-end test shards one generated clip under hostile ids."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import webdataset
from hypothesis import given, settings
from hypothesis import strategies as st
from media import make_video

from pipeline.keys import PREFIX_CHARS, is_valid_key, sample_key
from pipeline.reader import read_shards
from pipeline.shards import finalize, plan_shards, write_shard
from pipeline.types import FrameFormat, SamplingPlan

MAX_KEY_CHARS = PREFIX_CHARS + 1 + 16
HOSTILE_IDS = [
    "../../etc/passwd",
    "a.b.c",
    "a/b/c",
    "a_b_c",
    "/abs",
    "..",
    ".",
    "",
    " ",
    "\x00\x1b[31mred\n",
    "日本語のビデオ",
    "Ça va? ünïcødé",
    "x" * 10_000,
    "x" * 10_001,
    "CON",
    "-rf",
]


def assert_safe(key: str) -> None:
    assert is_valid_key(key), key
    assert "." not in key and "/" not in key and "\\" not in key
    assert all(c.isascii() and c.isprintable() and not c.isspace() for c in key)
    assert not key.startswith("-")
    assert len(key) <= MAX_KEY_CHARS


def test_hostile_ids_give_safe_distinct_keys():
    keys = [sample_key(video_id) for video_id in HOSTILE_IDS]
    for key in keys:
        assert_safe(key)
    assert len(set(keys)) == len(HOSTILE_IDS)


def test_ids_that_sanitise_alike_stay_distinct():
    same_prefix = ["a.b.c", "a/b/c", "a_b_c", "a b c", "a..b..c"]
    keys = [sample_key(i) for i in same_prefix]
    assert {k.rsplit("_", 1)[0] for k in keys} == {"a_b_c"}
    assert len(set(keys)) == len(same_prefix)


def test_keys_are_readable_and_stable():
    assert sample_key("v_abc123").startswith("v_abc123_")
    assert sample_key("Café") == sample_key("Café")
    assert sample_key("Café").startswith("Cafe_")
    # A key never changes between runs or machines: it is part of the on-disk format.
    assert sample_key("../../etc/passwd") == "etc_passwd_3754d6cb3a38e118"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_id_gives_a_safe_key(video_id):
    assert_safe(sample_key(video_id))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=50), st.text(max_size=50))
def test_different_ids_give_different_keys(a, b):
    assert (sample_key(a) == sample_key(b)) == (a == b)


def test_hostile_ids_round_trip_through_a_shard(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", n=10, fps=10.0, size=(64, 48))
    ids = HOSTILE_IDS
    manifest = pa.table(
        {
            "video_id": ids,
            "path": [str(clip)] * len(ids),
            "labels": [["x"]] * len(ids),
            "split": ["train"] * len(ids),
            "duration": pa.array([1.0] * len(ids), pa.float64()),
        }
    )
    out = tmp_path / "out"
    plans = plan_shards(
        manifest,
        out,
        sampling=SamplingPlan(fps=2.0),
        fmt=FrameFormat(short_side=48),
        backend="pyav",
        videos_per_shard=len(ids),
    )
    (result,) = [write_shard(plan) for plan in plans]
    assert result.videos_ok == len(ids)
    finalize(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "errors.parquet",
        "index.parquet",
        "settings.json",
        "shard-000000.meta.json",
        "shard-000000.tar",
    ]

    assert [s.meta["video_id"] for s in read_shards(out, decode_frames=False)] == ids
    with tarfile.open(result.path) as tar:
        names = tar.getnames()
        assert all("/" not in n and not n.startswith(".") for n in names)
        extracted = tmp_path / "extracted"
        tar.extractall(extracted, filter="data")
    assert len(list(extracted.iterdir())) == len(names)  # everything landed inside, flat

    for sample in webdataset.WebDataset([result.path], shardshuffle=False):
        assert json.loads(sample["json"])["key"] == sample["__key__"]
