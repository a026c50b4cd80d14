"""Plain layout for users' own videos: one CSV or JSON Lines file of (video_id, caption, split) rows.

`datasets.data_path` is the file; `datasets.video_path` is the folder of videos named by video_id.
Optional `start` and `end` columns (seconds) restrict a video to a clip.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.readers.base import SPLITS, AnnotationError, Caption, SplitAnnotations

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "caption", "split")
OPTIONAL_COLUMNS = ("start", "end")
DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")

ClipTime = tuple[float | None, float | None]


@dataclass(frozen=True)
class PlainRow:
    line: int
    video_id: str
    caption: str
    split: str
    clip: ClipTime


def check_columns(columns: list[str], path: Path, where: str) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if missing or unknown or repeated:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unknown:
            problems.append(f"unknown {unknown}")
        if repeated:
            problems.append(f"repeated {repeated}")
        raise AnnotationError(
            f"{path}, {where}: {'; '.join(problems)} columns. The columns are video_id, caption and split, "
            "optionally start and end (seconds); rename or remove the others"
        )


def read_csv_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Return (line number, row) pairs of a CSV or TSV file with a header line."""
    # utf-8-sig drops the byte-order mark that spreadsheet programs write.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=DELIMITERS[path.suffix.lower()])
        header = next(reader, None)
        if header is None:
            raise AnnotationError(f"{path} is empty; expected a header line 'video_id,caption,split' and one row a caption")
        header = [name.strip() for name in header]
        check_columns(header, path, "header")

        records = []
        for values in reader:
            if not any(value.strip() for value in values):
                continue
            if len(values) != len(header):
                raise AnnotationError(
                    f"{path}, line {reader.line_num}: {len(values)} fields for {len(header)} columns; quote captions "
                    "that contain the separator"
                )
            records.append((reader.line_num, dict(zip(header, values))))
    return records


def read_json_lines_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Return (line number, object) pairs of a JSON Lines file; blank lines are ignored."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{path}, line {number}: invalid JSON ({error.msg}); each line must be one object "
                                  'such as {"video_id": "v1", "caption": "...", "split": "train"}') from error
        if not isinstance(record, dict):
            raise AnnotationError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        check_columns(list(record), path, f"line {number}")
        records.append((number, record))
    return records


def parse_seconds(value: Any, name: str, path: Path, line: int) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        seconds = float(value)
    except (TypeError, ValueError) as error:
        raise AnnotationError(f"{path}, line {line}: {name} = {value!r} is not a number of seconds") from error
    if not math.isfinite(seconds) or seconds < 0:
        raise AnnotationError(f"{path}, line {line}: {name} = {value!r}; expected a non-negative number of seconds")
    return seconds


def parse_text(value: Any, name: str, path: Path, line: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and name == "video_id":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(f"{path}, line {line}: {name} is empty or not text ({value!r}); every row needs one")
    return value.strip()


def parse_row(line: int, record: dict[str, Any], path: Path) -> PlainRow:
    video_id = parse_text(record["video_id"], "video_id", path, line)
    caption = parse_text(record["caption"], "caption", path, line)
    split = parse_text(record["split"], "split", path, line)
    if split not in SPLITS:
        raise AnnotationError(f"{path}, line {line}: split '{split}' is not one of {', '.join(SPLITS)}")

    start = parse_seconds(record.get("start"), "start", path, line)
    end = parse_seconds(record.get("end"), "end", path, line)
    if start is not None and end is not None and end <= start:
        raise AnnotationError(f"{path}, line {line}: end ({end}) must be after start ({start})")
    return PlainRow(line=line, video_id=video_id, caption=caption, split=split, clip=(start, end))


def read_plain_rows(path: Path) -> list[PlainRow]:
    suffix = path.suffix.lower()
    if suffix in DELIMITERS:
        records = read_csv_records(path)
    elif suffix in JSON_LINES_SUFFIXES:
        records = read_json_lines_records(path)
    else:
        raise AnnotationError(
            f"{path}: unknown annotation file type '{suffix}'; use a .csv, .tsv or .jsonl file with the columns "
            "video_id, caption and split"
        )
    if not records:
        raise AnnotationError(f"{path} has no rows; add one row a caption with video_id, caption and split")
    return [parse_row(line, record, path) for line, record in records]


def clip_times_of(rows: list[PlainRow], path: Path) -> dict[str, ClipTime]:
    """Return each video's clip; every row of a video must give the same start and end."""
    clips: dict[str, ClipTime] = {}
    first_line: dict[str, int] = {}
    for row in rows:
        if row.video_id not in clips:
            clips[row.video_id] = row.clip
            first_line[row.video_id] = row.line
        elif clips[row.video_id] != row.clip:
            raise AnnotationError(
                f"{path}, line {row.line}: video '{row.video_id}' has start/end {row.clip}, but line "
                f"{first_line[row.video_id]} gives {clips[row.video_id]}; a video has one clip, so give every row "
                "of it the same start and end (or split the clip into its own video file)"
            )
    return {video_id: clip for video_id, clip in clips.items() if clip != (None, None)}


def warn_about_training_videos_in_evaluation(rows: list[PlainRow], path: Path) -> None:
    splits_of_video: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of_video[row.video_id].add(row.split)
    shared = sorted(video_id for video_id, splits in splits_of_video.items() if "train" in splits and len(splits) > 1)
    if shared:
        logger.warning("%s: %d training videos also appear in val or test, so evaluation sees training videos, "
                       "for example %s", path, len(shared), shared[:5])


def read_plain(datasets, split: str) -> SplitAnnotations:
    """Read one split of a plain annotation file: each row of the split is a caption, in file order.

    Text ids are '<video id>#<n>', n counting the video's rows within the split from 0. Videos come
    in order of first appearance.
    """
    if not datasets.data_path:
        raise AnnotationError("datasets.data_path is not set; for data_type 'plain' it must be a .csv, .tsv or .jsonl file "
                              "with the columns video_id, caption and split")
    path = Path(datasets.data_path).expanduser()
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}; set datasets.data_path to your .csv, .tsv or .jsonl file")

    rows = read_plain_rows(path)
    clip_times = clip_times_of(rows, path)
    warn_about_training_videos_in_evaluation(rows, path)

    split_rows = [row for row in rows if row.split == split]
    if not split_rows:
        counts = {name: sum(row.split == name for row in rows) for name in SPLITS}
        raise AnnotationError(f"{path} has no rows with split '{split}' (rows per split: {counts}); "
                              f"mark some rows '{split}'")

    per_video: dict[str, int] = defaultdict(int)
    captions = []
    for row in split_rows:
        captions.append(Caption(text_id=f"{row.video_id}#{per_video[row.video_id]}", video_id=row.video_id,
                                text=row.caption))
        per_video[row.video_id] += 1

    video_ids = tuple(per_video)
    split_clips = {video_id: clip_times[video_id] for video_id in video_ids if video_id in clip_times}
    logger.info("plain %s: %d videos, %d captions from %s", split, len(video_ids), len(captions), path)
    return SplitAnnotations(split, tuple(captions), video_ids, clip_times=split_clips, source_files=(str(path),))
