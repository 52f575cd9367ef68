"""Manifests: the one table every ingest stage starts from.

A manifest is a Parquet file holding a single normalised table, so that every source of videos
(a CSV, a JSONL, a folder of class sub-folders, ActivityNet v1.3 JSON, the FCVID release) ends up
in the same shape before any decoding starts:

    video_id  string          unique, stable identifier (the original id; shard keys derive from it)
    path      string          absolute path of the video file
    labels    list<string>    zero or more class names (multi-label is first class; [] = unlabelled)
    split     string          e.g. train / val / test
    duration  double, null    seconds, when the source states it

Rows keep the order of the source; downstream planning is deterministic in that order.

Problems are reported, never silently dropped (see `ValidationReport`):
  * duplicate ids are always an error: two rows cannot both own one id;
  * missing files are listed and kept out of the manifest with a warning naming them
    (`strict=True` makes them an error);
  * labels not in the optional class list are listed and their videos kept out the same way
    (`strict=True` makes them an error).
`read_manifest` refuses an unreadable file or one with missing/mistyped columns, null ids or paths,
or duplicate ids, with a ManifestError naming the problem, before any work is done.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from featstore import storage

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("duration", pa.float64(), nullable=True),
    ]
)
COLUMNS = tuple(SCHEMA.names)
VIDEO_EXTENSIONS = (
    ".mp4",
    ".webm",
    ".avi",
    ".mkv",
    ".mov",
    ".m4v",
    ".flv",
    ".mpg",
    ".mpeg",
    ".3gp",
)
LABEL_SEPARATORS = re.compile(r"[|;]")


class ManifestError(ValueError):
    """A manifest (or the source it is built from) cannot be used; the message names why."""


@dataclass
class ManifestRow:
    """One video before it becomes a table row."""

    video_id: str
    path: str
    labels: list[str]
    split: str
    duration: float | None = None


@dataclass
class ValidationReport:
    """What is wrong with a set of rows. Lists hold video ids; `unknown_labels` maps each unknown
    label to the ids that carry it."""

    duplicate_ids: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    unknown_labels: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.duplicate_ids or self.missing_files or self.unknown_labels)

    def lines(self) -> list[str]:
        """Human-readable description, one problem per line (ids listed, not counted away)."""
        out = []
        if self.duplicate_ids:
            out.append(
                f"duplicate ids ({len(self.duplicate_ids)}): {', '.join(self.duplicate_ids)}"
            )
        if self.missing_files:
            out.append(
                f"missing files ({len(self.missing_files)}): {', '.join(self.missing_files)}"
            )
        for label, ids in sorted(self.unknown_labels.items()):
            out.append(f"unknown label {label!r} on {len(ids)} video(s): {', '.join(ids)}")
        return out

    def to_dict(self) -> dict:
        return {
            "duplicate_ids": self.duplicate_ids,
            "missing_files": self.missing_files,
            "unknown_labels": self.unknown_labels,
        }


def validate(
    rows: Sequence[ManifestRow], classes: Sequence[str] | None = None, check_files: bool = True
) -> ValidationReport:
    """Find duplicate ids, missing files and (given a class list) unknown labels."""
    report = ValidationReport()
    counts = Counter(r.video_id for r in rows)
    report.duplicate_ids = [vid for vid, n in counts.items() if n > 1]
    if check_files:
        report.missing_files = [r.video_id for r in rows if not os.path.isfile(r.path)]
    if classes is not None:
        known = set(classes)
        for r in rows:
            for label in r.labels:
                if label not in known:
                    report.unknown_labels.setdefault(label, []).append(r.video_id)
    return report


def build_table(
    rows: Sequence[ManifestRow],
    classes: Sequence[str] | None = None,
    strict: bool = False,
    check_files: bool = True,
) -> tuple[pa.Table, ValidationReport]:
    """Validate rows and turn the usable ones into a manifest table.

    Duplicates raise ManifestError. Missing files and unknown labels raise with `strict`, else
    their videos are left out and named in a warning. Returns the table and the report.
    """
    report = validate(rows, classes, check_files=check_files)
    if report.duplicate_ids or (strict and not report.ok):
        raise ManifestError("manifest rejected: " + "; ".join(report.lines()))
    excluded = set(report.missing_files)
    for ids in report.unknown_labels.values():
        excluded.update(ids)
    if excluded:
        for line in report.lines():
            log.warning("left out of the manifest: %s", line)
    kept = [r for r in rows if r.video_id not in excluded]
    return rows_to_table(kept), report


def rows_to_table(rows: Iterable[ManifestRow]) -> pa.Table:
    rows = list(rows)
    return pa.table(
        {
            "video_id": [r.video_id for r in rows],
            "path": [r.path for r in rows],
            "labels": [list(r.labels) for r in rows],
            "split": [r.split for r in rows],
            "duration": [None if r.duration is None else float(r.duration) for r in rows],
        },
        schema=SCHEMA,
    )


def write_manifest(table: pa.Table, path: str | Path) -> str | Path:
    """Write atomically (temp name, then rename; one upload for a URL) so a reader never sees
    half a manifest. `path` may be a local path or an object-storage URL."""
    table = _conform(table, str(path))
    storage.write_parquet(table, path)
    return str(path) if storage.is_remote(path) else Path(path)


def read_manifest(path: str | Path) -> pa.Table:
    """Load and check a manifest (a local path or a URL); raise ManifestError naming the
    problem before any work. Relative video paths are taken relative to the manifest."""
    try:
        found = storage.exists(path) and not storage.is_dir(path)
    except storage.StorageError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    if not found:
        raise ManifestError(f"{path}: manifest file does not exist")
    try:
        table = storage.read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc})") from exc
    table = _conform(table, str(path))
    if storage.is_remote(path):
        base = str(path).rsplit("/", 1)[0]
    else:
        base = str(Path(path).resolve().parent)
    paths = [p if os.path.isabs(p) or storage.is_remote(p) else storage.join(base, p)
             for p in table.column("path").to_pylist()]
    table = table.set_column(1, SCHEMA.field("path"), pa.array(paths, pa.string()))
    counts = Counter(table.column("video_id").to_pylist())
    dups = [vid for vid, n in counts.items() if n > 1]
    if dups:
        raise ManifestError(f"{path}: duplicate video ids: {', '.join(dups)}")
    return table


def _conform(table: pa.Table, where: str) -> pa.Table:
    """Select, order and cast the manifest columns, refusing anything that does not fit."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{where}: missing column(s): {', '.join(missing)}")
    columns = []
    for fld in SCHEMA:
        col = table.column(fld.name)
        try:
            col = col.cast(fld.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ManifestError(
                f"{where}: column {fld.name!r} has type {table.schema.field(fld.name).type}, "
                f"expected {fld.type}"
            ) from exc
        if not fld.nullable and col.null_count:
            raise ManifestError(f"{where}: column {fld.name!r} has {col.null_count} null value(s)")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line; blank lines and lines starting with '#' are ignored."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def _resolve(path: str, root: Path) -> str:
    if storage.is_remote(path):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def _id_from_path(path: str) -> str:
    return Path(path).with_suffix("").as_posix().lstrip("/")


def _split_labels(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in LABEL_SEPARATORS.split(str(value)) if part.strip()]


def _parse_duration(value: object, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: duration {value!r} is not a number") from exc


def _record_to_row(rec: dict, root: Path, default_split: str, where: str) -> ManifestRow:
    path = rec.get("path")
    if not path:
        raise ManifestError(f"{where}: no 'path'")
    labels = rec["labels"] if "labels" in rec else rec.get("label")
    return ManifestRow(
        video_id=str(rec.get("video_id") or _id_from_path(str(path))),
        path=_resolve(str(path), root),
        labels=_split_labels(labels),
        split=str(rec.get("split") or default_split),
        duration=_parse_duration(rec.get("duration"), where),
    )


def rows_from_csv(
    csv_path: str | Path, root: str | Path | None = None, default_split: str = "train"
) -> list[ManifestRow]:
    """Rows from a CSV with a header row.

    Columns: `path` (required; relative paths are taken relative to `root`, default the CSV's
    folder), `video_id` (default: the path without extension), `labels` or `label` (several
    labels separated by `|` or `;`), `split` (default `default_split`), `duration` (seconds).
    Other columns are ignored.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ManifestError(f"{csv_path}: CSV needs a header row with a 'path' column")
        return [
            _record_to_row(rec, base, default_split, f"{csv_path}:{n + 2}")
            for n, rec in enumerate(reader)
        ]


def rows_from_jsonl(
    jsonl_path: str | Path, root: str | Path | None = None, default_split: str = "train"
) -> list[ManifestRow]:
    """Rows from JSON Lines: one object per line with the same keys as the CSV; `labels` is a
    list of strings (a single string is also accepted, split on `|`/`;`)."""
    jsonl_path = Path(jsonl_path)
    base = Path(root) if root is not None else jsonl_path.parent
    rows = []
    for n, line in enumerate(jsonl_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{jsonl_path}:{n}: invalid JSON ({exc})") from exc
        if not isinstance(rec, dict):
            raise ManifestError(f"{jsonl_path}:{n}: expected a JSON object")
        rows.append(_record_to_row(rec, base, default_split, f"{jsonl_path}:{n}"))
    return rows


def rows_from_folder(
    root: str | Path, split: str = "train", extensions: Sequence[str] = VIDEO_EXTENSIONS
) -> list[ManifestRow]:
    """Rows from a folder laid out `root/<class>/<file>`: the label is the class folder and the
    id is the path relative to root without extension (e.g. `dog/clip01`). Files in deeper
    sub-folders keep their class folder's label; files directly under root, and files whose
    extension is not a video extension, are not videos of any class and are skipped. Sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    exts = {e.lower() for e in extensions}
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in exts:
                rel = file.relative_to(root)
                rows.append(
                    ManifestRow(
                        video_id=rel.with_suffix("").as_posix(),
                        path=str(file.resolve()),
                        labels=[class_dir.name],
                        split=split,
                    )
                )
    return rows


ACTIVITYNET_SPLITS = {"training": "train", "validation": "val", "testing": "test"}


def _find_video(video_root: Path, video_id: str, index: dict[str, Path]) -> Path:
    for stem in (f"v_{video_id}", video_id):
        if stem in index:
            return index[stem]
    return video_root / f"v_{video_id}.mp4"


def _index_by_stem(video_root: Path, extensions: Sequence[str]) -> dict[str, Path]:
    exts = {e.lower() for e in extensions}
    index: dict[str, Path] = {}
    if video_root.is_dir():
        for file in sorted(video_root.rglob("*")):
            if file.is_file() and file.suffix.lower() in exts:
                index.setdefault(file.stem, file.resolve())
    return index


def rows_from_activitynet(
    json_path: str | Path,
    video_root: str | Path,
    subsets: Sequence[str] | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> list[ManifestRow]:
    """Rows from ActivityNet v1.3 JSON (`{"database": {id: {subset, duration, annotations:
    [{segment, label}]}}}`).

    Videos are looked up by id anywhere under `video_root` as `v_<id>.<ext>` or `<id>.<ext>`
    (a video not found gets the path `video_root/v_<id>.mp4` and is reported missing).
    Labels are the distinct annotation labels in order of first appearance (testing videos have
    none). Subsets map training→train, validation→val, testing→test; `subsets` keeps only those
    ActivityNet subset names. Duration comes from the JSON.
    """
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        database = data["database"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{json_path}: not ActivityNet JSON with a 'database' ({exc})") from exc
    video_root = Path(video_root)
    index = _index_by_stem(video_root, extensions)
    rows = []
    for video_id, entry in database.items():
        subset = entry.get("subset", "")
        if subsets is not None and subset not in subsets:
            continue
        labels: list[str] = []
        for ann in entry.get("annotations") or []:
            if ann.get("label") and ann["label"] not in labels:
                labels.append(ann["label"])
        rows.append(
            ManifestRow(
                video_id=video_id,
                path=str(_find_video(video_root, video_id, index)),
                labels=labels,
                split=ACTIVITYNET_SPLITS.get(subset, subset or "unknown"),
                duration=_parse_duration(entry.get("duration"), f"{json_path}: {video_id}"),
            )
        )
    return rows


def rows_from_fcvid(
    split_file: str | Path,
    label_file: str | Path,
    video_root: str | Path,
    categories: str | Path | None = None,
) -> list[ManifestRow]:
    """Rows from the FCVID release's list-and-label text files.

    Accepted layout (the release's `materials/` folder):
      * `split_file` (FCVID_VideoName_TrainTestSplit.txt): one video per line,
        `<relative/path.ext> <split>` separated by whitespace, split being `train` or `test`;
        the path is relative to `video_root`;
      * `label_file` (FCVID_Label.txt): one line per video, in the same order, of whitespace-
        separated 0/1 values, one column per category; every column holding 1 is a label
        (multi-label);
      * `categories` (optional): one category name per line in column order, an optional leading
        index number being ignored (`12 making cake` → `making cake`). Without it, labels are the
        0-based column numbers as strings.
    The id is the relative path without extension. Blank lines are skipped.
    """
    split_lines = [ln.split() for ln in Path(split_file).read_text().splitlines() if ln.strip()]
    label_lines = [ln.split() for ln in Path(label_file).read_text().splitlines() if ln.strip()]
    if len(split_lines) != len(label_lines):
        raise ManifestError(
            f"FCVID lists disagree: {split_file} has {len(split_lines)} videos, "
            f"{label_file} has {len(label_lines)} label rows"
        )
    names = None
    if categories is not None:
        names = []
        for line in Path(categories).read_text(encoding="utf-8").splitlines():
            if line.strip():
                names.append(re.sub(r"^\s*\d+\s+", "", line).strip())
    video_root = Path(video_root)
    rows = []
    for n, (parts, bits) in enumerate(zip(split_lines, label_lines), start=1):
        if len(parts) < 2:
            raise ManifestError(f"{split_file}:{n}: expected '<path> <split>'")
        rel, split = " ".join(parts[:-1]), parts[-1]
        if names is not None and len(bits) != len(names):
            raise ManifestError(
                f"{label_file}:{n}: {len(bits)} label columns but {len(names)} categories"
            )
        try:
            hot = [i for i, b in enumerate(bits) if float(b) > 0.5]
        except ValueError as exc:
            raise ManifestError(f"{label_file}:{n}: label values must be 0/1 ({exc})") from exc
        rows.append(
            ManifestRow(
                video_id=_id_from_path(rel),
                path=_resolve(rel, video_root),
                labels=[names[i] if names is not None else str(i) for i in hot],
                split=split,
            )
        )
    return rows
