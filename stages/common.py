"""Pieces the stages share: frame settings, the training samples with the missing-video policy,
and the fingerprint of everything the cached targets depend on."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from cache.fingerprint import Fingerprint, sha256_file
from pipeline.config import Config
from pipeline.data.frames import FrameSettings
from pipeline.data.videos import scan_videos
from pipeline.data.readers import SplitAnnotations, read_split
from pipeline.data.samples import SampleSet, build_samples
from pipeline.data.video_dataset import VideoFramesDataset
from pipeline.text.tokenizer import VOCAB_FILE

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
SKIPPED_VIDEOS_REPORT = "skipped_videos.json"


class MissingVideosError(RuntimeError):
    """Videos of a split that are missing or cannot be decoded, with the ids and the fix."""


def frame_settings(config: Config, split: str) -> FrameSettings:
    datasets = config.datasets
    return FrameSettings(
        feature_framerate=datasets.feature_framerate,
        max_frames=datasets.max_frames,
        slice_framepos=datasets.slice_framepos,
        frame_order=datasets.train_frame_order if split == "train" else datasets.eval_frame_order,
    )


def split_videos(config: Config, samples: SampleSet, split: str) -> VideoFramesDataset:
    """Build the decoding dataset of a split's videos with the config's frame settings, time limit and seed."""
    return VideoFramesDataset(config.datasets.video_path, samples.video_ids, frame_settings(config, split),
                              clip_times=samples.clip_times, timeout_s=config.datasets.decode_timeout_s,
                              seed=config.train.seed)


def default_cache_path(config: Config) -> Path:
    if config.cache.path:
        return Path(config.cache.path)
    suffix = ".h5" if config.cache.backend == "hdf5" else ".zarr"
    return Path(config.train.output_dir) / f"teacher_cache{suffix}"


@dataclass(frozen=True)
class SplitData:
    annotations: SplitAnnotations
    samples: SampleSet
    skipped: dict[str, str]  # video id -> reason it was skipped


def load_split(config: Config, split: str, report_dir: Path | None = None, scan: bool = True,
               skipped: dict[str, str] | None = None) -> SplitData:
    """Read a split and apply the missing-video policy: stop (default) or skip with a report.

    `skipped` reuses the outcome of an earlier scan (another process's, or the one stored in a
    cache) instead of scanning the videos again.
    """
    annotations = read_split(config.datasets, split)
    if skipped is not None:
        samples = build_samples(annotations, skip_videos=frozenset(skipped))
        return SplitData(annotations=annotations, samples=samples, skipped=dict(skipped))
    skipped = {}

    if scan:
        video_dir = Path(config.datasets.video_path).expanduser()
        if not video_dir.is_dir():
            raise MissingVideosError(
                f"video folder {video_dir} (datasets.video_path) not found or not a folder; point "
                "datasets.video_path at the folder that holds the split's videos"
            )
        report = scan_videos(config.datasets.video_path, annotations.video_ids, frame_settings(config, split))
        skipped = report.problems()
        if skipped and config.datasets.on_missing_video == "stop":
            examples = "; ".join(f"{video_id}: {reason}" for video_id, reason in list(skipped.items())[:5])
            raise MissingVideosError(
                f"{len(skipped)} of {len(annotations.video_ids)} videos of split '{split}' under "
                f"{config.datasets.video_path} are missing or unreadable ({examples}). Restore them, or pass "
                "--set datasets.on_missing_video=skip to leave them and their captions out (ids are written "
                f"to {SKIPPED_VIDEOS_REPORT})"
            )

    if skipped and report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / SKIPPED_VIDEOS_REPORT).write_text(json.dumps({"split": split, "skipped": skipped}, indent=2))
        logger.warning("skipping %d videos of split '%s'; ids written to %s", len(skipped), split,
                       report_dir / SKIPPED_VIDEOS_REPORT)

    samples = build_samples(annotations, skip_videos=frozenset(skipped))
    return SplitData(annotations=annotations, samples=samples, skipped=skipped)


def cache_fingerprint(config: Config, split: SplitData, teachers: list[dict]) -> Fingerprint:
    """Collect every setting the cached targets depend on; distill compares them field by field."""
    datasets, train = config.datasets, config.train
    fields = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "data_type": datasets.data_type,
        "annotation_sha256": {Path(path).name: sha256_file(path) for path in split.annotations.source_files},
        "video_list_sha256": split.samples.video_list_digest(),
        "num_videos": len(split.samples.video_ids),
        "num_samples": split.samples.num_samples,
        "skipped_videos": sorted(split.skipped),
        "frame_settings": asdict(frame_settings(config, "train")),
        "tokenizer": {"vocab": VOCAB_FILE, "max_words": datasets.max_words},
        "expand_sentences": datasets.expand_msrvtt_sentences,
        "batch_size": train.batch_size,
        "seed": train.seed,
        "epochs": train.epochs,
        "teachers": teachers,
        "teacher_precision": config.model.precision,
    }
    return Fingerprint(fields)
