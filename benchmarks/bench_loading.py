"""Distill data loading: steps per second from cached frames against decoding the same videos.

Both loaders replay the same schedule of the bundled clips through the same DataLoader
(no model), so the ratio is the cost of decoding against reading uint8 frames from the cache.
Usage: python benchmarks/bench_loading.py [--steps 96] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from cache import TeacherCache
from pipeline.config import build_config
from pipeline.data.step_dataset import ScheduleDataset, TrainingTables
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.teachers import save_tiny_teacher
from stages.common import frame_settings
from stages.demo import DEMO_MAX_FRAMES, DEMO_MAX_WORDS, demo_config_dict, write_tiny_clip
from stages.precompute import run_precompute


def steps_per_second(config, use_cached_frames: bool, steps: int, workers: int) -> float:
    with TeacherCache.open(config.cache.path) as cache:
        tables = TrainingTables.from_cache(cache)
    dataset = ScheduleDataset(tables, slice(None), config.datasets.video_path, frame_settings(config, "train"), {},
                              None, 0, cache_path=config.cache.path, use_cached_frames=use_cached_frames)
    order = [step % len(tables.schedule) for step in range(steps)]
    loader = DataLoader(dataset, batch_size=None, sampler=order, num_workers=workers)

    started = time.perf_counter()
    for _ in loader:
        pass
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=96, help="steps loaded per mode (the schedule repeats)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to try")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        clip_path = write_tiny_clip(directory / "tiny-clip.pt")
        teacher = save_tiny_teacher("xclip", directory / "tiny-xclip.bin", CLIP_PRESETS["tiny"],
                                    max_words=DEMO_MAX_WORDS, max_frames=DEMO_MAX_FRAMES, seed=1)
        config = build_config(demo_config_dict(directory, clip_path, teacher, epochs=1, backend="zarr"))
        run_precompute(config)

        rates = {workers: (steps_per_second(config, True, args.steps, workers),
                           steps_per_second(config, False, args.steps, workers))
                 for workers in args.workers}

    print(f"batch {config.train.batch_size} videos x {DEMO_MAX_FRAMES} frames, {args.steps} steps per measurement")
    for workers, (cached, decoded) in rates.items():
        print(f"{workers} workers: cached frames {cached:6.2f} steps/s, decoding {decoded:5.2f} steps/s, "
              f"ratio {cached / decoded:5.1f}x (target at least 10x)")

if __name__ == "__main__":
    main()
