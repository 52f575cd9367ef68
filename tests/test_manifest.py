"""Manifest builders, validation and the refusal of bad manifests.

The "videos" here are small placeholder files: building a manifest never decodes, it only needs
files to exist. All inputs (CSV, JSONL, ActivityNet JSON, FCVID lists) are generated here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.manifest import (
    ManifestError,
    ManifestRow,
    build_table,
    read_class_list,
    read_manifest,
    rows_from_activitynet,
    rows_from_csv,
    rows_from_fcvid,
    rows_from_folder,
    rows_from_jsonl,
    rows_to_table,
    write_manifest,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by manifest code")
    return path


def test_csv_rows_take_multiple_labels_and_resolve_relative_paths(tmp_path: Path) -> None:
    touch(tmp_path / "vids" / "a.mp4")
    touch(tmp_path / "vids" / "b.webm")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "path,labels,split,duration,comment\n"
        "vids/a.mp4,cat|dog,val,12.5,x\n"
        "vids/b.webm,bird; fish ,,,y\n"
    )
    rows = rows_from_csv(csv_path)
    assert [r.video_id for r in rows] == ["vids/a", "vids/b"]
    assert rows[0].path == str((tmp_path / "vids" / "a.mp4").resolve())
    assert rows[0].labels == ["cat", "dog"] and rows[1].labels == ["bird", "fish"]
    assert rows[0].split == "val" and rows[1].split == "train"
    assert rows[0].duration == 12.5 and rows[1].duration is None


def test_csv_accepts_label_column_and_explicit_ids(tmp_path: Path) -> None:
    touch(tmp_path / "x.mp4")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("video_id,path,label\nmy-id,x.mp4,running\n")
    (row,) = rows_from_csv(csv_path)
    assert (row.video_id, row.labels) == ("my-id", ["running"])


def test_csv_without_path_column_is_refused(tmp_path: Path) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("file,label\nx.mp4,a\n")
    with pytest.raises(ManifestError, match="'path' column"):
        rows_from_csv(csv_path)


def test_jsonl_rows_take_label_lists(tmp_path: Path) -> None:
    touch(tmp_path / "v" / "1.mp4")
    jl = tmp_path / "list.jsonl"
    jl.write_text(
        json.dumps({"path": "v/1.mp4", "labels": ["a", "b"], "split": "test", "duration": 3})
        + "\n\n"
        + json.dumps({"video_id": "two", "path": "v/2.mp4", "labels": []})
        + "\n"
    )
    rows = rows_from_jsonl(jl)
    assert rows[0] == ManifestRow("v/1", str((tmp_path / "v/1.mp4").resolve()), ["a", "b"],
                                  "test", 3.0)
    assert rows[1].video_id == "two" and rows[1].labels == []


def test_jsonl_reports_the_bad_line(tmp_path: Path) -> None:
    jl = tmp_path / "list.jsonl"
    jl.write_text('{"path": "a.mp4"}\n{oops\n')
    with pytest.raises(ManifestError, match=r"list.jsonl:2"):
        rows_from_jsonl(jl)


def test_folder_rows_use_class_folders_as_labels(tmp_path: Path) -> None:
    touch(tmp_path / "dog" / "b.mp4")
    touch(tmp_path / "dog" / "a.avi")
    touch(tmp_path / "cat" / "sub" / "c.webm")
    touch(tmp_path / "cat" / "notes.txt")
    rows = rows_from_folder(tmp_path, split="val")
    assert [(r.video_id, r.labels) for r in rows] == [
        ("cat/sub/c", ["cat"]),
        ("dog/a", ["dog"]),
        ("dog/b", ["dog"]),
    ]
    assert {r.split for r in rows} == {"val"}


def test_activitynet_rows_find_videos_and_collect_labels(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    touch(videos / "train" / "v_abc.mp4")
    touch(videos / "val" / "xyz.mkv")
    database = {
        "abc": {"subset": "training", "duration": 120.5, "annotations": [
            {"segment": [1.0, 5.0], "label": "Surfing"},
            {"segment": [9.0, 12.0], "label": "Diving"},
            {"segment": [20.0, 30.0], "label": "Surfing"},
        ]},
        "xyz": {"subset": "validation", "duration": 60.0, "annotations": [
            {"segment": [0.0, 3.0], "label": "Diving"}]},
        "tst": {"subset": "testing", "duration": 30.0, "annotations": []},
    }
    js = tmp_path / "activity_net.v1-3.min.json"
    js.write_text(json.dumps({"version": "VERSION 1.3", "database": database}))
    rows = rows_from_activitynet(js, videos)
    by_id = {r.video_id: r for r in rows}
    assert by_id["abc"].labels == ["Surfing", "Diving"]
    assert by_id["abc"].path == str((videos / "train" / "v_abc.mp4").resolve())
    assert by_id["abc"].split == "train" and by_id["abc"].duration == 120.5
    assert by_id["xyz"].path.endswith("xyz.mkv") and by_id["xyz"].split == "val"
    assert by_id["tst"].labels == [] and by_id["tst"].split == "test"
    _, report = build_table(rows)
    assert report.missing_files == ["tst"]
    only_val = rows_from_activitynet(js, videos, subsets=["validation"])
    assert [r.video_id for r in only_val] == ["xyz"]


def test_fcvid_rows_decode_the_label_matrix(tmp_path: Path) -> None:
    touch(tmp_path / "videos" / "cake" / "v1.mp4")
    touch(tmp_path / "videos" / "beach" / "v2.mp4")
    split = tmp_path / "FCVID_VideoName_TrainTestSplit.txt"
    split.write_text("cake/v1.mp4 train\nbeach/v2.mp4 test\n")
    labels = tmp_path / "FCVID_Label.txt"
    labels.write_text("1 0 1\n0 1 0\n")
    cats = tmp_path / "FCVID_Category.txt"
    cats.write_text("1 making cake\n2 beach\n3 birthday party\n")
    rows = rows_from_fcvid(split, labels, tmp_path / "videos", categories=cats)
    assert [(r.video_id, r.labels, r.split) for r in rows] == [
        ("cake/v1", ["making cake", "birthday party"], "train"),
        ("beach/v2", ["beach"], "test"),
    ]
    unnamed = rows_from_fcvid(split, labels, tmp_path / "videos")
    assert unnamed[0].labels == ["0", "2"]


def test_fcvid_lists_of_different_lengths_are_refused(tmp_path: Path) -> None:
    split = tmp_path / "s.txt"
    split.write_text("a.mp4 train\nb.mp4 train\n")
    labels = tmp_path / "l.txt"
    labels.write_text("1 0\n")
    with pytest.raises(ManifestError, match="2 videos.*1 label rows"):
        rows_from_fcvid(split, labels, tmp_path)


def test_duplicate_ids_are_an_error_naming_them(tmp_path: Path) -> None:
    p = str(touch(tmp_path / "a.mp4"))
    rows = [ManifestRow("a", p, ["x"], "train"), ManifestRow("a", p, ["y"], "train")]
    with pytest.raises(ManifestError, match="duplicate ids.*: a"):
        build_table(rows)


def test_missing_files_are_left_out_with_a_warning(tmp_path: Path, caplog) -> None:
    p = str(touch(tmp_path / "here.mp4"))
    rows = [
        ManifestRow("here", p, ["x"], "train"),
        ManifestRow("gone", str(tmp_path / "gone.mp4"), ["x"], "train"),
    ]
    with caplog.at_level(logging.WARNING, logger="pipeline.manifest"):
        table, report = build_table(rows)
    assert table.column("video_id").to_pylist() == ["here"]
    assert report.missing_files == ["gone"]
    assert "gone" in caplog.text
    with pytest.raises(ManifestError, match="missing files.*gone"):
        build_table(rows, strict=True)


def test_unknown_labels_are_reported_against_the_class_list(tmp_path: Path) -> None:
    p = str(touch(tmp_path / "a.mp4"))
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# classes\ncat\ndog\n\n")
    classes = read_class_list(classes_file)
    assert classes == ["cat", "dog"]
    rows = [ManifestRow("a", p, ["cat"], "train"), ManifestRow("b", p, ["cat", "dgo"], "train")]
    table, report = build_table(rows, classes=classes)
    assert report.unknown_labels == {"dgo": ["b"]}
    assert table.column("video_id").to_pylist() == ["a"]
    assert any("'dgo'" in line for line in report.lines())
    with pytest.raises(ManifestError, match="unknown label 'dgo'"):
        build_table(rows, classes=classes, strict=True)


def test_manifest_round_trips_with_schema(tmp_path: Path) -> None:
    p = str(touch(tmp_path / "a.mp4"))
    rows = [ManifestRow("a", p, ["x", "y"], "train", 2.5), ManifestRow("b", p, [], "test")]
    out = write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    table = read_manifest(out)
    assert table.schema.names == ["video_id", "path", "labels", "split", "duration"]
    assert table.schema.field("labels").type == pa.list_(pa.string())
    assert table.to_pylist()[1] == {"video_id": "b", "path": p, "labels": [], "split": "test",
                                    "duration": None}
    assert not list(tmp_path.glob(".*tmp*"))


def test_read_manifest_refuses_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"video_id": ["a"], "path": ["/x.mp4"], "split": ["train"],
                             "duration": [1.0]}), path)
    with pytest.raises(ManifestError, match="missing column.*labels"):
        read_manifest(path)


def test_read_manifest_refuses_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_text("video_id,path\n")
    with pytest.raises(ManifestError, match="not a readable Parquet manifest"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.parquet")


def test_read_manifest_refuses_duplicates_and_nulls(tmp_path: Path) -> None:
    base = {"path": ["/a.mp4", "/b.mp4"], "labels": [["x"], ["y"]], "split": ["t", "t"],
            "duration": [None, None]}
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"video_id": ["a", "a"], **base}), dup)
    with pytest.raises(ManifestError, match="duplicate video ids: a"):
        read_manifest(dup)
    null = tmp_path / "null.parquet"
    pq.write_table(pa.table({"video_id": ["a", None], **base}), null)
    with pytest.raises(ManifestError, match="'video_id' has 1 null"):
        read_manifest(null)


def test_read_manifest_resolves_relative_paths_against_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"video_id": ["a"], "path": ["v/a.mp4"], "labels": [["x"]],
                             "split": ["train"], "duration": [1]}), path)
    table = read_manifest(path)
    assert table.column("path")[0].as_py() == str(tmp_path.resolve() / "sub" / "v" / "a.mp4")
    assert table.column("duration").type == pa.float64()
