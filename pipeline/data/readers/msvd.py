"""MSVD layout: `raw-captions.pkl` (video id -> token lists) and one video list per split.

The folder helpers here (`annotation_folder`, `require_file`, `read_id_list`) serve the other
folder-based layouts too (DiDeMo uses the same list files).
"""

from __future__ import annotations

import io
import logging
import pickle
from collections import Counter
from pathlib import Path

from pipeline.data.readers.base import AnnotationError, Caption, SplitAnnotations

logger = logging.getLogger(__name__)

CAPTION_FILE = "raw-captions.pkl"
LIST_FILES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


def annotation_folder(datasets, layout: str, expected: tuple[str, ...]) -> Path:
    """Return `datasets.data_path` as a folder, or raise naming the files the layout expects in it."""
    listing = ", ".join(expected)
    if not datasets.data_path:
        raise AnnotationError(
            f"datasets.data_path is not set; for data_type '{datasets.data_type}' it must be the {layout} "
            f"annotation folder that contains {listing}"
        )
    folder = Path(datasets.data_path).expanduser()
    if not folder.is_dir():
        raise AnnotationError(
            f"{layout} annotation folder not found: {folder}; set datasets.data_path to the folder that contains {listing}"
        )
    return folder


def require_file(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise AnnotationError(
            f"{layout} annotation file not found: {path}; put it in the folder that datasets.data_path names "
            f"({path.parent})"
        )
    return path


def read_id_list(path: Path) -> tuple[str, ...]:
    """Return the ids of a list file, one a line, in file order; blank lines are ignored."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [line for line in lines if line]

    duplicates = sorted(video_id for video_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise AnnotationError(f"{path} lists {len(duplicates)} ids more than once, for example {duplicates[:5]}; "
                              "keep one line per id")
    if not ids:
        raise AnnotationError(f"{path} lists no ids; expected one video id a line")
    return tuple(ids)


class CaptionUnpickler(pickle.Unpickler):
    """Unpickler for caption files, which contain only dicts, lists and strings.

    `find_class` loads no global at all, so a pickle cannot run code while it loads.
    """

    def __init__(self, handle: io.BufferedReader, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str):
        raise AnnotationError(
            f"{self.path} tries to load the Python global '{module}.{name}'; a caption pickle may contain only "
            "dicts, lists and strings, so this file is rejected. Re-save it as a dict of video id -> list of "
            "token lists"
        )


def load_caption_pickle(path: Path) -> dict:
    with path.open("rb") as handle:
        try:
            data = CaptionUnpickler(handle, path).load()
        except AnnotationError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as error:
            raise AnnotationError(f"{path} is not a readable caption pickle: {error}") from error
    if not isinstance(data, dict):
        raise AnnotationError(f"{path} contains a {type(data).__name__}; expected a dict of video id -> list of token lists")
    return data


def caption_text(caption: object, path: Path, video_id: str) -> str:
    """Join a caption's tokens with single spaces, as the reference loaders do."""
    if isinstance(caption, str):
        # The reference would join the characters of a plain string with spaces; take it as written.
        return caption
    if isinstance(caption, list) and all(isinstance(token, str) for token in caption):
        return " ".join(caption)
    raise AnnotationError(f"{path}: a caption of video '{video_id}' is {caption!r}; expected a list of token strings")


def read_msvd(datasets, split: str) -> SplitAnnotations:
    """Read one MSVD split: every caption of every listed video, in list order, is a sample or a query.

    `datasets.data_path` is the folder that contains raw-captions.pkl, train_list.txt, val_list.txt and
    test_list.txt. Text ids are '<video id>#<caption index>'.
    """
    folder = annotation_folder(datasets, "MSVD", (CAPTION_FILE, *LIST_FILES.values()))
    list_path = require_file(folder / LIST_FILES[split], "MSVD")
    caption_path = require_file(folder / CAPTION_FILE, "MSVD")

    video_ids = read_id_list(list_path)
    captions_by_video = load_caption_pickle(caption_path)

    missing = [video_id for video_id in video_ids if video_id not in captions_by_video]
    if missing:
        raise AnnotationError(
            f"{len(missing)} videos of {list_path} have no captions in {caption_path}, for example {missing[:5]}; "
            "check that the list and caption files come from the same MSVD release"
        )

    captions = []
    for video_id in video_ids:
        video_captions = captions_by_video[video_id]
        if not isinstance(video_captions, list) or not video_captions:
            raise AnnotationError(f"{caption_path}: video '{video_id}' has {video_captions!r}; expected a non-empty "
                                  "list of captions")
        for index, caption in enumerate(video_captions):
            text = caption_text(caption, caption_path, video_id)
            captions.append(Caption(text_id=f"{video_id}#{index}", video_id=video_id, text=text))

    logger.info("MSVD %s: %d videos, %d captions from %s", split, len(video_ids), len(captions), list_path)
    return SplitAnnotations(split, tuple(captions), video_ids, source_files=(str(caption_path), str(list_path)))
