"""Training samples and the replayable schedule of global batches.

A sample is a (text, video) pair. The schedule is data: for each epoch a seeded permutation of the
samples cut into batches of `batch_size`, the last partial batch dropped, so stage one and stage two
replay exactly the same batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np

from pipeline.data.readers import SplitAnnotations
from pipeline.text.tokenizer import TokenizedTexts, tokenize_captions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSet:
    """Unique texts and videos of a split and the (text, video) pairs that index them."""

    text_ids: tuple[str, ...]
    captions: tuple[str, ...]
    video_ids: tuple[str, ...]
    text_index: np.ndarray  # [samples] int32 into text_ids
    video_index: np.ndarray  # [samples] int32 into video_ids
    clip_times: dict[str, tuple[float | None, float | None]]

    @property
    def num_samples(self) -> int:
        return len(self.text_index)

    def video_list_digest(self) -> str:
        return hashlib.sha256(json.dumps(list(self.video_ids)).encode("utf-8")).hexdigest()


def build_samples(annotations: SplitAnnotations, skip_videos: frozenset[str] = frozenset()) -> SampleSet:
    """Build one sample per caption, leaving out videos in `skip_videos`; videos keep the split's order."""
    kept_videos = tuple(video_id for video_id in annotations.video_ids if video_id not in skip_videos)
    video_position = {video_id: index for index, video_id in enumerate(kept_videos)}
    captions = [caption for caption in annotations.captions if caption.video_id in video_position]
    if not captions:
        raise ValueError(
            f"split '{annotations.split}' has no caption left after skipping {len(skip_videos)} videos; "
            "check the video folder and the annotation files"
        )

    text_index = np.arange(len(captions), dtype=np.int32)
    video_index = np.array([video_position[caption.video_id] for caption in captions], dtype=np.int32)
    if skip_videos:
        logger.warning("skipped %d videos and their captions: %s", len(skip_videos), sorted(skip_videos)[:20])

    return SampleSet(
        text_ids=tuple(caption.text_id for caption in captions),
        captions=tuple(caption.text for caption in captions),
        video_ids=kept_videos,
        text_index=text_index,
        video_index=video_index,
        clip_times={video_id: annotations.clip_times[video_id]
                    for video_id in kept_videos if video_id in annotations.clip_times},
    )


def tokenize_samples(samples: SampleSet, max_words: int) -> TokenizedTexts:
    return tokenize_captions(list(samples.captions), max_words)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch; the generator is seeded with (seed, epoch) so epochs are independent."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def one_caption_per_video(samples: SampleSet, seed: int, epoch: int) -> np.ndarray:
    """Indices of one randomly chosen sample per video, as MSR-VTT training without expanded sentences does."""
    rng = np.random.default_rng([seed, epoch, 1])
    chosen = []
    for video in range(len(samples.video_ids)):
        candidates = np.flatnonzero(samples.video_index == video)
        chosen.append(candidates[rng.integers(len(candidates))])
    return np.asarray(chosen, dtype=np.int64)


def build_schedule(samples: SampleSet, batch_size: int, epochs: int, seed: int,
                   expand_sentences: bool = True) -> np.ndarray:
    """Global batches [steps, batch_size] of sample indices for all epochs, last partial batch dropped."""
    batches = []
    for epoch in range(epochs):
        if expand_sentences:
            order = epoch_permutation(samples.num_samples, seed, epoch)
        else:
            pool = one_caption_per_video(samples, seed, epoch)
            order = pool[epoch_permutation(len(pool), seed, epoch)]

        full_batches = len(order) // batch_size
        if full_batches == 0:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {len(order)} samples of an epoch, so no full batch "
                "exists; lower train.batch_size"
            )
        batches.append(order[: full_batches * batch_size].reshape(full_batches, batch_size))  # [steps, batch]

    schedule = np.concatenate(batches).astype(np.int64)
    logger.info("schedule: %d epochs x %d steps of %d samples", epochs, len(schedule) // epochs, batch_size)
    return schedule


def steps_per_epoch(schedule: np.ndarray, epochs: int) -> int:
    return len(schedule) // epochs
