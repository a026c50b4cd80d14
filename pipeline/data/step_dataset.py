"""Replay of the training schedule: one item per step with this process's slice of the global batch.

Under Accelerate each process takes rows [rank * local, (rank + 1) * local) of the scheduled global
batch. The cached teacher targets of the whole global batch come along, because the losses are
computed over the gathered global B x B matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from cache import TeacherCache
from pipeline.data.frames import FrameSettings
from pipeline.data.video_dataset import VideoFramesDataset

logger = logging.getLogger(__name__)


def local_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """Rows of the global batch that process `rank` trains on."""
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size {batch_size} is not divisible by the {world_size} processes; "
            "choose a batch size that is a multiple of the process count"
        )
    local = batch_size // world_size
    return slice(rank * local, (rank + 1) * local)


@dataclass(frozen=True)
class TrainingTables:
    """Tables for replaying the schedule (besides frames and targets), read from a cache or built from the config."""

    schedule: np.ndarray  # [steps, batch] sample indices
    text_index: np.ndarray  # [samples]
    video_index: np.ndarray  # [samples]
    tokens: np.ndarray  # [texts, max_words]
    mask: np.ndarray  # [texts, max_words]
    video_ids: tuple[str, ...]
    frame_mask: np.ndarray | None = None  # [videos, frames], present when read from a cache

    @classmethod
    def from_cache(cls, cache: TeacherCache) -> "TrainingTables":
        return cls(
            schedule=np.asarray(cache.schedule),
            text_index=np.asarray(cache.text_index),
            video_index=np.asarray(cache.video_index),
            tokens=np.asarray(cache.tokens),
            mask=np.asarray(cache.mask),
            video_ids=tuple(str(video_id) for video_id in cache.video_ids),
            frame_mask=np.asarray(cache.frame_mask),
        )


class ScheduleDataset(Dataset):
    """Step s -> tokens, frames and masks of this process's rows, plus the global batch's cached teacher targets."""

    def __init__(self, tables: TrainingTables, rows: slice, video_dir: str | Path | None, settings: FrameSettings,
                 clip_times: dict, timeout_s: float | None, seed: int,
                 cache_path: str | Path | None = None, use_cached_frames: bool = False, read_targets: bool = True):
        self.tables = tables
        self.read_targets = read_targets and cache_path is not None
        self.rows = rows
        self.cache_path = str(cache_path) if cache_path else None
        self.use_cached_frames = use_cached_frames
        self.videos = VideoFramesDataset(video_dir or ".", tables.video_ids, settings, clip_times, timeout_s, seed)
        self._cache: TeacherCache | None = None

    def cache(self) -> TeacherCache:
        # Opened lazily so each DataLoader worker opens its own handle.
        if self._cache is None:
            self._cache = TeacherCache.open(self.cache_path, mode="r")
        return self._cache

    def __len__(self) -> int:
        return len(self.tables.schedule)

    def read_cached_frames(self, video_rows: np.ndarray) -> torch.Tensor:
        """Read stored frames [videos, frames, H, W, 3] straight into one tensor.

        In a DataLoader worker the tensor is allocated in shared memory, so handing it to the
        training process costs no further copy of the pixels.
        """
        cache = self.cache()
        first = cache.read_video_frames(int(video_rows[0]))
        frames = torch.empty((len(video_rows), *first.shape), dtype=torch.uint8)
        if get_worker_info() is not None:
            frames.share_memory_()
        pixels = frames.numpy()
        pixels[0] = first
        for row, video in enumerate(video_rows[1:], start=1):
            pixels[row] = cache.read_video_frames(int(video))
        return frames

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        tables = self.tables
        samples = tables.schedule[step]  # [global batch]
        local = samples[self.rows]  # [local batch]
        text_rows = tables.text_index[local]
        video_rows = tables.video_index[local]

        if self.use_cached_frames:
            frames = self.read_cached_frames(video_rows)
            frame_mask = tables.frame_mask[video_rows]
        else:
            decoded = [self.videos.load(int(video)) for video in video_rows]
            frames = np.stack([video.frames for video in decoded])  # [local, frames, H, W, 3]
            frame_mask = np.stack([video.frame_mask for video in decoded])

        item = {
            "step": torch.tensor(step),
            "sample_ids": torch.from_numpy(samples.astype(np.int64)),
            "input_ids": torch.from_numpy(tables.tokens[text_rows].astype(np.int64)),
            "attention_mask": torch.from_numpy(tables.mask[text_rows].astype(np.int64)),
            "frames": frames if isinstance(frames, torch.Tensor) else torch.from_numpy(frames),
            "frame_mask": torch.from_numpy(frame_mask.astype(bool)),
        }
        if self.read_targets:
            targets = self.cache().read_step(step)
            names = sorted(targets)
            item["teacher_logits"] = torch.from_numpy(np.stack([targets[name][0] for name in names]))  # [teachers, B, B]
            item["teacher_frames"] = torch.from_numpy(np.stack([targets[name][1] for name in names]))  # [teachers, B, F]
        return item
