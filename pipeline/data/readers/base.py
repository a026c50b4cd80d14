"""Annotation reader results: the captions and the video list of one split."""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


class AnnotationError(ValueError):
    """An annotation file that is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Caption:
    """One text of a split: a training caption or an evaluation query, with its positive video."""

    text_id: str
    video_id: str
    text: str


@dataclass(frozen=True)
class SplitAnnotations:
    """Captions and videos of one split, in the order the reference loaders enumerate them."""

    split: str
    captions: tuple[Caption, ...]
    video_ids: tuple[str, ...]
    # Start and end second of each video's clip, for datasets that use only part of a video.
    clip_times: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # Paths of the annotation files read, for the cache fingerprint.
    source_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = set(self.video_ids)
        orphans = sorted({caption.video_id for caption in self.captions if caption.video_id not in known})
        if orphans:
            raise AnnotationError(
                f"{len(orphans)} captions of split '{self.split}' name videos outside the split's video list, "
                f"for example {orphans[:5]}; check that the caption and split files belong together"
            )
