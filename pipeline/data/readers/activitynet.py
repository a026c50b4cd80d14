"""ActivityNet Captions layout: paragraph-to-video retrieval, one paragraph per whole video."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data.readers.base import AnnotationError, Caption, SplitAnnotations
from pipeline.data.readers.msvd import annotation_folder, require_file

logger = logging.getLogger(__name__)

# ActivityNet Captions has no public test annotations, so the reference evaluates on val_1 for
# both the validation and the test split.
CAPTION_FILES = {"train": "train.json", "val": "val_1.json", "test": "val_1.json"}
ID_FILES = {"train": "train_ids.json", "val": "val_ids.json", "test": "val_ids.json"}
EXPECTED_FILES = ("train.json", "val_1.json", "train_ids.json", "val_ids.json")
PARAGRAPH_SEPARATOR = " "


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from error
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path} is not UTF-8 text: {error}") from error


def read_video_ids(path: Path) -> tuple[str, ...]:
    """Return the ids of an ids file (a JSON list), first occurrences only, in file order."""
    ids = load_json(path)
    if not isinstance(ids, list) or not all(isinstance(video_id, str) for video_id in ids):
        raise AnnotationError(f"{path} must be a JSON list of video id strings such as [\"v_QOlSCBRmfWY\", ...]")
    if not ids:
        raise AnnotationError(f"{path} lists no video ids; expected a JSON list such as [\"v_QOlSCBRmfWY\", ...]")

    repeated = sorted(video_id for video_id, count in Counter(ids).items() if count > 1)
    if repeated:
        logger.warning("%s lists %d ids more than once; each is used once, for example %s", path, len(repeated),
                       repeated[:5])
    return tuple(dict.fromkeys(ids))


def paragraph_and_end(video_id: str, entry: Any, path: Path) -> tuple[str, float]:
    """Join a video's sentences into one paragraph and round its duration up to whole seconds."""
    if not isinstance(entry, dict) or "sentences" not in entry or "duration" not in entry:
        raise AnnotationError(f"{path}: entry '{video_id}' needs 'duration' and 'sentences' keys; got {entry!r:.200}")

    sentences = entry["sentences"]
    if not isinstance(sentences, list) or not sentences or not all(isinstance(text, str) for text in sentences):
        raise AnnotationError(f"{path}: 'sentences' of '{video_id}' must be a non-empty list of strings")

    try:
        duration = float(entry["duration"])
    except (TypeError, ValueError) as error:
        raise AnnotationError(f"{path}: 'duration' of '{video_id}' is {entry['duration']!r}; expected seconds") from error
    if not math.isfinite(duration) or duration < 0:
        raise AnnotationError(f"{path}: 'duration' of '{video_id}' is {duration}; expected a non-negative number of seconds")

    # The reference keeps each sentence as written (often with a leading space) and joins with one space.
    return PARAGRAPH_SEPARATOR.join(sentences), float(math.ceil(duration))


def read_activitynet(datasets, split: str) -> SplitAnnotations:
    """Read one ActivityNet Captions split: one paragraph query per video, in the ids file's order.

    `datasets.data_path` is the folder that contains train.json, val_1.json, train_ids.json and
    val_ids.json; the test split reads the val_1 files, as the reference does. Video ids are kept as
    written in the ids file, 'v_' prefix included, so they match video files named 'v_<id>.mp4'
    (the reference strips two characters from both the ids and the file names before matching them).
    Each video's clip is (0, ceil(duration)) seconds. Text ids are '<video id>#0'. Listed videos
    without an entry in the caption file are left out, as the reference does, and logged.
    """
    folder = annotation_folder(datasets, "ActivityNet Captions", EXPECTED_FILES)
    ids_path = require_file(folder / ID_FILES[split], "ActivityNet Captions")
    caption_path = require_file(folder / CAPTION_FILES[split], "ActivityNet Captions")

    listed_ids = read_video_ids(ids_path)
    entries = load_json(caption_path)
    if not isinstance(entries, dict):
        raise AnnotationError(f"{caption_path} must be a JSON object of video id -> {{duration, timestamps, sentences}}")

    without_captions = [video_id for video_id in listed_ids if video_id not in entries]
    if len(without_captions) == len(listed_ids):
        raise AnnotationError(
            f"none of the {len(listed_ids)} ids of {ids_path} has an entry in {caption_path} (first id: "
            f"'{listed_ids[0]}'); check that both files are of the same split and spell ids alike"
        )
    if without_captions:
        logger.warning("%d videos of %s have no entry in %s and are left out, for example %s",
                       len(without_captions), ids_path, caption_path, without_captions[:5])

    captions = []
    clip_times: dict[str, tuple[float | None, float | None]] = {}
    video_ids = tuple(video_id for video_id in listed_ids if video_id in entries)
    for video_id in video_ids:
        paragraph, end = paragraph_and_end(video_id, entries[video_id], caption_path)
        captions.append(Caption(text_id=f"{video_id}#0", video_id=video_id, text=paragraph))
        clip_times[video_id] = (0.0, end)

    logger.info("ActivityNet Captions %s: %d videos, one paragraph each, from %s", split, len(video_ids), ids_path)
    return SplitAnnotations(split, tuple(captions), video_ids, clip_times=clip_times,
                            source_files=(str(caption_path), str(ids_path)))
