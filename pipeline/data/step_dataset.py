"""Replay of the training schedule: one item per step with this process's slice of the global batch.

Under Accelerate each process takes rows [rank * local, (rank + 1) * local) of the scheduled global
batch; the cached teacher targets of the whole global batch come along, because the losses are
computed over the gathered global B x B matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

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


class ScheduleDataset(Dataset):
    """Step s -> tokens, frames and masks of this process's rows, plus the global batch's teacher targets."""

    def __init__(self, cache_path: str | Path, schedule: np.ndarray, rows: slice,
                 video_dir: str | Path | None, settings: FrameSettings, clip_times: dict,
                 video_ids: tuple[str, ...], timeout_s: float | None, seed: int,
                 read_targets: bool = True, use_cached_frames: bool = False):
        self.cache_path = str(cache_path)
        self.schedule = schedule
        self.rows = rows
        self.read_targets = read_targets
        self.use_cached_frames = use_cached_frames
        self.videos = VideoFramesDataset(video_dir or ".", video_ids, settings, clip_times, timeout_s, seed)
        self._cache: TeacherCache | None = None
        self._tables: dict[str, np.ndarray] | None = None

    def cache(self) -> TeacherCache:
        # Opened lazily so each DataLoader worker holds its own handle.
        if self._cache is None:
            self._cache = TeacherCache.open(self.cache_path, mode="r")
            self._tables = {
                "text_index": np.asarray(self._cache.text_index),
                "video_index": np.asarray(self._cache.video_index),
                "tokens": np.asarray(self._cache.tokens),
                "mask": np.asarray(self._cache.mask),
            }
        return self._cache

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        cache = self.cache()
        tables = self._tables
        samples = self.schedule[step]  # [global batch]
        local = samples[self.rows]  # [local batch]
        text_rows = tables["text_index"][local]
        video_rows = tables["video_index"][local]

        if self.use_cached_frames:
            frames = np.stack([cache.read_video_frames(int(video)) for video in video_rows])
            frame_mask = np.asarray(cache.frame_mask)[video_rows]
        else:
            decoded = [self.videos.load(int(video)) for video in video_rows]
            frames = np.stack([video.frames for video in decoded])  # [local, frames, H, W, 3]
            frame_mask = np.stack([video.frame_mask for video in decoded])

        item = {
            "step": torch.tensor(step),
            "sample_ids": torch.from_numpy(samples.astype(np.int64)),
            "input_ids": torch.from_numpy(tables["tokens"][text_rows].astype(np.int64)),
            "attention_mask": torch.from_numpy(tables["mask"][text_rows].astype(np.int64)),
            "frames": torch.from_numpy(frames),
            "frame_mask": torch.from_numpy(frame_mask.astype(bool)),
        }
        if self.read_targets:
            targets = cache.read_step(step)
            names = sorted(targets)
            item["teacher_logits"] = torch.from_numpy(np.stack([targets[name][0] for name in names]))  # [teachers, B, B]
            item["teacher_frames"] = torch.from_numpy(np.stack([targets[name][1] for name in names]))  # [teachers, B, F]
        return item
