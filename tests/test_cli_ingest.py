"""`c2f manifest`, `c2f synth` and `c2f shards` through cluster.cli.main, checking exit codes and
outputs. Inputs are generated: placeholder files for manifests, synth videos for shards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from pipeline.manifest import ManifestRow, read_manifest, rows_to_table, write_manifest


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")
    return path


def test_manifest_csv_writes_and_reports_left_out_videos(tmp_path: Path, capsys) -> None:
    touch(tmp_path / "a.mp4")
    (tmp_path / "list.csv").write_text("path,labels\na.mp4,x|y\nb.mp4,x\n")
    out = tmp_path / "m.parquet"
    code = main(["manifest", "csv", str(tmp_path / "list.csv"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "left out: missing files (1): b" in captured.err
    assert read_manifest(out).column("video_id").to_pylist() == ["a"]
    assert main(["manifest", "check", str(out)]) == 0
    strict_out = tmp_path / "strict.parquet"
    code = main(["manifest", "csv", str(tmp_path / "list.csv"), "--out", str(strict_out),
                 "--strict"])
    assert code == 2 and not strict_out.exists()


def test_manifest_with_duplicate_ids_is_refused(tmp_path: Path, capsys) -> None:
    touch(tmp_path / "a.mp4")
    (tmp_path / "list.csv").write_text("video_id,path\nsame,a.mp4\nsame,a.mp4\n")
    out = tmp_path / "m.parquet"
    assert main(["manifest", "csv", str(tmp_path / "list.csv"), "--out", str(out)]) == 2
    assert "duplicate ids (1): same" in capsys.readouterr().err
    assert not out.exists()


def test_manifest_folder_and_check_against_classes(tmp_path: Path, capsys) -> None:
    touch(tmp_path / "videos" / "cat" / "1.mp4")
    touch(tmp_path / "videos" / "dgo" / "2.mp4")
    out = tmp_path / "m.parquet"
    assert main(["manifest", "folder", str(tmp_path / "videos"), "--out", str(out),
                 "--split", "val"]) == 0
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert main(["manifest", "check", str(out), "--classes", str(tmp_path / "classes.txt")]) == 1
    assert "unknown label 'dgo' on 1 video(s): dgo/2" in capsys.readouterr().err
    assert main(["manifest", "check", str(tmp_path / "nope.parquet")]) == 2


def test_synth_cli_writes_a_manifest_and_refuses_unknown_codecs(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--videos", "2", "--classes", "2", "--width", "64",
                 "--height", "48", "--min-duration", "1", "--max-duration", "1"]) == 0
    assert read_manifest(out / "manifest.parquet").num_rows == 2
    assert main(["synth", "--out", str(out), "--codecs", "h265"]) == 2


def test_help_texts_describe_every_command(capsys) -> None:
    for command in ("manifest", "synth", "shards", "submit"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
    text = capsys.readouterr().out
    assert "Exit codes: 0 every video written" in text and "--videos-per-shard" in text
    assert "FCVID" in text and "ActivityNet" in text and "http://HEAD:8265" in text


def test_shards_cli_end_to_end_on_the_tiny_dataset(ray_local, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["shards", "--manifest", str(tiny_dataset.manifest), "--out", str(out), "--fps", "1",
            "--short-side", "64", "--videos-per-shard", "3", "--mode", "local"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["shards"], summary["videos_ok"], summary["videos_failed"]) == (2, 6, 0)
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert sorted((r["video_id"], r["status"]) for r in index) == [
        (f"synth_{i:04d}", "ok") for i in range(6)
    ]
    assert main(args) == 0  # a re-run skips the finished shards
    assert "(2 already finished)" in capsys.readouterr().err


def test_shards_cli_exit_codes_for_bad_manifest_and_failed_video(tiny_dataset, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    out = tmp_path / "never"
    assert main(["shards", "--manifest", str(bad), "--out", str(out), "--mode", "inprocess"]) == 2
    assert "not a readable Parquet manifest" in capsys.readouterr().err
    assert not out.exists()  # refused before any work

    good = read_manifest(tiny_dataset.manifest).to_pylist()[0]
    fake = touch(tmp_path / "fake.mp4")
    rows = [ManifestRow(**good), ManifestRow("fake", str(fake), ["x"], "train")]
    manifest = write_manifest(rows_to_table(rows), tmp_path / "m.parquet")
    out = tmp_path / "shards"
    code = main(["shards", "--manifest", str(manifest), "--out", str(out), "--short-side", "64",
                 "--mode", "inprocess"])
    assert code == 1
    assert "1 video(s) failed" in capsys.readouterr().err
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["video_id"] for e in errors] == ["fake"]
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [(r["video_id"], r["status"]) for r in index] == [(good["video_id"], "ok"),
                                                             ("fake", "failed")]
