"""MSR-VTT layout (also VATEX): a JSON of videos and sentences plus one csv per split."""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path

from pipeline.data.readers.base import AnnotationError, Caption, SplitAnnotations

logger = logging.getLogger(__name__)

CSV_SEPARATORS = (",", ";")


def require_path(path: str | Path | None, what: str) -> Path:
    if not path:
        raise AnnotationError(f"no {what} is configured; set it in the config's datasets section")
    path = Path(path).expanduser()
    if not path.is_file():
        raise AnnotationError(f"{what} not found: {path}; check the path in the config's datasets section")
    return path


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a csv whose separator is ',' or ';' (copies of the MSR-VTT test csv use both)."""
    with path.open(newline="", encoding="utf-8") as handle:
        header = handle.readline()
        separator = max(CSV_SEPARATORS, key=header.count)
        handle.seek(0)
        rows = list(csv.DictReader(handle, delimiter=separator))
    if not rows or "video_id" not in rows[0]:
        raise AnnotationError(f"{path} has no 'video_id' column (header: {header.strip()!r}); expected an MSR-VTT split csv")
    return rows


def read_sentences(data_path: Path) -> dict[str, list[str]]:
    """Map each video id to its captions, in the order of the JSON's 'sentences' list."""
    try:
        data = json.loads(data_path.read_text(encoding="utf-8"))
        sentences = data["sentences"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise AnnotationError(f"{data_path} is not an MSR-VTT data JSON with a 'sentences' list: {error}") from error

    captions: dict[str, list[str]] = defaultdict(list)
    for item in sentences:
        captions[item["video_id"]].append(item["caption"])
    return captions


def read_msrvtt_train(data_path: Path, split_csv: Path, split: str) -> SplitAnnotations:
    """Read every caption of every video listed in the split csv, one caption a sample."""
    rows = read_csv_rows(split_csv)
    video_ids = tuple(dict.fromkeys(row["video_id"] for row in rows))
    sentences = read_sentences(data_path)

    missing = [video_id for video_id in video_ids if video_id not in sentences]
    if missing:
        raise AnnotationError(
            f"{len(missing)} videos of {split_csv} have no caption in {data_path}, for example {missing[:5]}"
        )

    captions = tuple(
        Caption(text_id=f"{video_id}#{index}", video_id=video_id, text=text)
        for video_id in video_ids
        for index, text in enumerate(sentences[video_id])
    )
    logger.info("%s: %d videos, %d captions", split, len(video_ids), len(captions))
    return SplitAnnotations(split, captions, video_ids, source_files=(str(data_path), str(split_csv)))


def read_msrvtt_queries(data_path: Path | None, split_csv: Path, split: str) -> SplitAnnotations:
    """Evaluation queries: one per csv row when the csv carries sentences (1k-A), else every caption."""
    rows = read_csv_rows(split_csv)
    if "sentence" in rows[0]:
        captions = tuple(
            Caption(text_id=row.get("key") or f"{row['video_id']}#{index}", video_id=row["video_id"], text=row["sentence"])
            for index, row in enumerate(rows)
        )
        video_ids = tuple(dict.fromkeys(row["video_id"] for row in rows))
        logger.info("%s: %d videos, %d queries from %s", split, len(video_ids), len(captions), split_csv)
        return SplitAnnotations(split, captions, video_ids, source_files=(str(split_csv),))

    if data_path is None:
        raise AnnotationError(f"{split_csv} lists videos without sentences, so data_path (the data JSON) is needed")
    return read_msrvtt_train(data_path, split_csv, split)


def read_msrvtt(datasets, split: str) -> SplitAnnotations:
    """Read one split of an MSR-VTT-layout dataset from the config's datasets section."""
    split_csv = require_path({"train": datasets.train_csv, "val": datasets.val_csv, "test": datasets.test_csv}[split],
                             f"{split}_csv")
    if split == "train":
        return read_msrvtt_train(require_path(datasets.data_path, "data_path"), split_csv, split)
    data_path = Path(datasets.data_path).expanduser() if datasets.data_path else None
    return read_msrvtt_queries(data_path if data_path and data_path.is_file() else None, split_csv, split)
