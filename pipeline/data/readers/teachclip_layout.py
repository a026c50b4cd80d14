"""TeachCLIP's own evaluation layout: a video set, a query set and a ground-truth file per split.

Layout under the dataset root (`datasets.data_path`), as TeachCLIP's release organises it:

    VideoSet/<set>.txt           one video id a line
    QuerySet/<set>-query.txt     query id, tab, sentence
    Annotations/<name>-gt.txt    query id, tab, video id

Each of `datasets.train_csv`, `val_csv` and `test_csv` names a split's files in one of two ways:
- a set name such as `msrvtt1k-test`: the reader opens VideoSet/msrvtt1k-test.txt and
  QuerySet/msrvtt1k-test-query.txt, and the first ground-truth file that exists of
  Annotations/msrvtt1k-test-gt.txt and Annotations/msrvtt1k-gt.txt (the set name with its last
  '-' part replaced by 'gt', the name TeachCLIP's README uses);
- three names separated by commas, `<video set>,<query set>,<ground truth>`, such as
  `msrvtt1k-test,msrvtt1k-test-query,msrvtt1k-gt`, for files named otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.data.readers.base import AnnotationError, Caption, SplitAnnotations
from pipeline.data.readers.didemo import CLIP_END_S, CLIP_START_S
from pipeline.data.readers.msvd import annotation_folder, read_id_list

logger = logging.getLogger(__name__)

VIDEO_SET_DIR = "VideoSet"
QUERY_SET_DIR = "QuerySet"
GROUND_TRUTH_DIR = "Annotations"
QUERY_SUFFIX = "-query"
GROUND_TRUTH_SUFFIX = "-gt"
SPLIT_FIELDS = {"train": "train_csv", "val": "val_csv", "test": "test_csv"}


def split_files(folder: Path, spec: str, field: str) -> tuple[Path, Path, Path]:
    """Resolve a split's video set, query set and ground-truth file from the config value `spec`."""
    names = [name.strip().removesuffix(".txt") for name in spec.split(",")]
    if len(names) == 3 and all(names):
        video_set, query_set, ground_truth = names
        candidates = [folder / GROUND_TRUTH_DIR / f"{ground_truth}.txt"]
    elif len(names) == 1 and names[0]:
        video_set = names[0]
        query_set = f"{video_set}{QUERY_SUFFIX}"
        candidates = [folder / GROUND_TRUTH_DIR / f"{video_set}{GROUND_TRUTH_SUFFIX}.txt"]
        if "-" in video_set:
            candidates.append(folder / GROUND_TRUTH_DIR / f"{video_set.rsplit('-', 1)[0]}{GROUND_TRUTH_SUFFIX}.txt")
    else:
        raise AnnotationError(
            f"datasets.{field} = {spec!r} is neither a set name such as 'msrvtt1k-test' nor three comma-separated "
            "names '<video set>,<query set>,<ground truth>'"
        )

    video_path = folder / VIDEO_SET_DIR / f"{video_set}.txt"
    query_path = folder / QUERY_SET_DIR / f"{query_set}.txt"
    for path, kind in ((video_path, "video set"), (query_path, "query set")):
        if not path.is_file():
            raise AnnotationError(f"{kind} file not found: {path} (from datasets.{field} = {spec!r}); check the set "
                                  f"name, or give '<video set>,<query set>,<ground truth>' names explicitly")

    existing = [path for path in candidates if path.is_file()]
    if not existing:
        tried = ", ".join(str(path) for path in candidates)
        raise AnnotationError(f"ground-truth file not found for datasets.{field} = {spec!r}; tried {tried}. "
                              "Give its name as the third of '<video set>,<query set>,<ground truth>'")
    return video_path, query_path, existing[0]


def read_tab_lines(path: Path, line_format: str) -> list[tuple[int, str, str]]:
    """Return (line number, first field, rest) for each non-blank line of a tab-separated file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if "\t" not in line:
            raise AnnotationError(f"{path}, line {number}: no tab in {line!r:.120}; each line must be {line_format}")
        first, rest = line.split("\t", 1)
        rows.append((number, first.strip(), rest.strip()))
    return rows


def read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, query_id, sentence in read_tab_lines(path, "'query id<TAB>sentence'"):
        if query_id in queries:
            raise AnnotationError(f"{path}, line {number}: query id '{query_id}' appears twice; query ids must be unique")
        if not query_id or not sentence:
            raise AnnotationError(f"{path}, line {number}: empty query id or sentence; each line must be "
                                  "'query id<TAB>sentence'")
        queries[query_id] = sentence
    return queries


def read_ground_truth(path: Path, queries: dict[str, str], video_set: set[str], video_path: Path,
                      query_path: Path) -> list[tuple[str, str]]:
    """Return the (query id, video id) pairs of a ground-truth file, checked against both sets."""
    pairs: list[tuple[str, str]] = []
    positives: dict[str, str] = {}
    for number, query_id, video_id in read_tab_lines(path, "'query id<TAB>video id'"):
        if "\t" in video_id or not video_id:
            raise AnnotationError(f"{path}, line {number}: expected exactly two fields, 'query id<TAB>video id'")
        if query_id not in queries:
            raise AnnotationError(f"{path}, line {number}: query '{query_id}' is not in {query_path}; add it there "
                                  "or remove the line")
        if video_id not in video_set:
            raise AnnotationError(f"{path}, line {number}: video '{video_id}' of query '{query_id}' is not in "
                                  f"{video_path}; add it there or remove the line")
        if query_id in positives:
            raise AnnotationError(
                f"{path}, line {number}: query '{query_id}' already has video '{positives[query_id]}'; each query "
                "needs exactly one positive video"
            )
        positives[query_id] = video_id
        pairs.append((query_id, video_id))

    if not pairs:
        raise AnnotationError(f"{path} has no 'query id<TAB>video id' lines")
    return pairs


def read_teachclip_layout(datasets, split: str) -> SplitAnnotations:
    """Read one split of TeachCLIP's layout: one caption per ground-truth line, in file order.

    Text ids are the query ids. Videos come in order of first appearance in the ground truth, as
    TeachCLIP's evaluation orders them. Videos of the video set without a query, and queries without
    a ground-truth line, are left out and logged. When the video set's path contains 'didemo' (any
    case), every clip is (0, 31) seconds, as TeachCLIP's video loader does for DiDeMo.
    """
    folder = annotation_folder(datasets, "TeachCLIP-layout", (VIDEO_SET_DIR, QUERY_SET_DIR, GROUND_TRUTH_DIR))
    field = SPLIT_FIELDS[split]
    spec = getattr(datasets, field)
    if not spec:
        raise AnnotationError(f"datasets.{field} is not set; for data_type 'teachclip' it names the {split} set, "
                              "for example 'msrvtt1k-test'")
    video_path, query_path, ground_truth_path = split_files(folder, spec, field)

    video_set = read_id_list(video_path)
    queries = read_queries(query_path)
    pairs = read_ground_truth(ground_truth_path, queries, set(video_set), video_path, query_path)

    captions = tuple(Caption(text_id=query_id, video_id=video_id, text=queries[query_id]) for query_id, video_id in pairs)
    video_ids = tuple(dict.fromkeys(video_id for _, video_id in pairs))

    queried = set(video_ids)
    unused_videos = [video_id for video_id in video_set if video_id not in queried]
    if unused_videos:
        logger.warning("%d videos of %s have no query in %s and are left out, for example %s",
                       len(unused_videos), video_path, ground_truth_path, unused_videos[:5])
    unused_queries = len(queries) - len(pairs)
    if unused_queries:
        logger.warning("%d queries of %s have no line in %s and are left out", unused_queries, query_path,
                       ground_truth_path)

    clip_times: dict[str, tuple[float | None, float | None]] = {}
    if "didemo" in str(video_path).lower():
        clip_times = {video_id: (CLIP_START_S, CLIP_END_S) for video_id in video_ids}

    logger.info("TeachCLIP layout %s: %d videos, %d queries from %s", split, len(video_ids), len(captions),
                ground_truth_path)
    return SplitAnnotations(split, captions, video_ids, clip_times=clip_times,
                            source_files=(str(video_path), str(query_path), str(ground_truth_path)))
