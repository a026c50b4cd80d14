"""DiDeMo layout: paragraph-to-video retrieval over the first 30 seconds of each video."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.data.readers.activitynet import load_json
from pipeline.data.readers.base import AnnotationError, Caption, SplitAnnotations
from pipeline.data.readers.msvd import annotation_folder, read_id_list, require_file

logger = logging.getLogger(__name__)

DATA_FILES = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
LIST_FILES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
PARAGRAPH_SEPARATOR = " "

# DiDeMo's annotators saw at most the first 30 seconds (six 5-second segments) of each video. The
# reference reads no durations. It requests seconds 0 through 31 of every video, and its frame
# reader stops at the video's own end, so shorter videos are read whole.
CLIP_START_S = 0.0
CLIP_END_S = 31.0


def descriptions_by_video(items: Any, path: Path, listed: set[str]) -> dict[str, list[str]]:
    """Group the descriptions of listed videos by video, in order of first appearance in the file."""
    if not isinstance(items, list):
        raise AnnotationError(f"{path} must be a JSON list of {{video, description, times}} objects")

    grouped: dict[str, list[str]] = {}
    unlisted = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("video"), str) or not isinstance(item.get("description"), str):
            raise AnnotationError(
                f"{path}: item {index} needs string 'video' and 'description' keys; got {item!r:.200}"
            )
        if item["video"] not in listed:
            unlisted.add(item["video"])
            continue
        grouped.setdefault(item["video"], []).append(item["description"])

    if unlisted:
        # The list files name only the videos that could be downloaded, so this is expected.
        logger.info("%s: %d videos with descriptions are not in the split's list file and are left out",
                    path, len(unlisted))
    return grouped


def read_didemo(datasets, split: str) -> SplitAnnotations:
    """Read one DiDeMo split: each listed video's descriptions joined into one paragraph query.

    `datasets.data_path` is the folder that contains {train,val,test}_data.json and
    {train,val,test}_list.txt. Videos come in order of first appearance in the data JSON, as in the
    reference; listed videos without descriptions are left out and logged. Every clip is (0, 31)
    seconds. Text ids are '<video id>#0'.
    """
    folder = annotation_folder(datasets, "DiDeMo", (*DATA_FILES.values(), *LIST_FILES.values()))
    list_path = require_file(folder / LIST_FILES[split], "DiDeMo")
    data_path = require_file(folder / DATA_FILES[split], "DiDeMo")

    listed = read_id_list(list_path)
    grouped = descriptions_by_video(load_json(data_path), data_path, set(listed))
    if not grouped:
        raise AnnotationError(
            f"no video of {list_path} has a description in {data_path} (first listed id: '{listed[0]}'); check that "
            "both files are of the same split and spell video ids alike"
        )

    without_descriptions = [video_id for video_id in listed if video_id not in grouped]
    if without_descriptions:
        logger.warning("%d videos of %s have no description in %s and are left out, for example %s",
                       len(without_descriptions), list_path, data_path, without_descriptions[:5])

    video_ids = tuple(grouped)
    captions = tuple(
        Caption(text_id=f"{video_id}#0", video_id=video_id, text=PARAGRAPH_SEPARATOR.join(grouped[video_id]))
        for video_id in video_ids
    )
    clip_times: dict[str, tuple[float | None, float | None]] = {
        video_id: (CLIP_START_S, CLIP_END_S) for video_id in video_ids
    }

    logger.info("DiDeMo %s: %d videos, one paragraph each, from %s", split, len(video_ids), list_path)
    return SplitAnnotations(split, captions, video_ids, clip_times=clip_times,
                            source_files=(str(data_path), str(list_path)))
