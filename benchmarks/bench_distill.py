"""Seconds per distill step with cached targets, with teachers online, and with no teacher at all.

All three modes train the same tiny student on the same cached frames and schedule, in one run,
so the differences are the cost of reading targets against running two teachers per step.
Usage: python benchmarks/bench_distill.py [--steps 12] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cache import TeacherCache
from pipeline import optim
from pipeline.config import build_config
from pipeline.data.step_dataset import ScheduleDataset, TrainingTables
from pipeline.losses import TeachCLIPLoss
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.factory import build_student
from pipeline.models.teachers import TEACHER_CLASSES, save_tiny_teacher
from stages.common import frame_settings
from stages.demo import demo_config_dict, write_tiny_clip
from stages.distill import load_online_teachers, online_targets, student_logits
from stages.precompute import run_precompute

MAX_WORDS = 32
MAX_FRAMES = 12
# The published MSR-VTT setting teaches from X-CLIP and TS2-Net together.
TEACHERS = ("xclip", "ts2net")
WARMUP_STEPS = 2


def prepare(directory: Path, batch_size: int):
    models = directory / "models"
    clip_path = write_tiny_clip(models / "tiny-clip.pt")
    data = demo_config_dict(directory, clip_path, models / "unused.bin", epochs=4, backend="zarr")
    data["distillation"]["teachers"] = [
        {"name": name, "checkpoint": str(save_tiny_teacher(name, models / f"tiny-{name}.bin", CLIP_PRESETS["tiny"],
                                                          max_words=MAX_WORDS, max_frames=MAX_FRAMES, seed=1))}
        for name in TEACHERS if name in TEACHER_CLASSES
    ]
    data["train"]["batch_size"] = batch_size
    data["datasets"]["num_thread_reader"] = 0
    config = build_config(data)
    run_precompute(config)
    return config


def time_mode(config, mode: str, steps: int) -> list[float]:
    """Train `steps` steps in one mode; returns the seconds of each step after the warm-up."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_student(config).train()
    optimizer, _, _ = optim.build_optimizer(model, "bertadam", lr=config.train.lr, t_total=steps)
    teachers = load_online_teachers(config, device) if mode == "online" else []
    loss_fn = TeachCLIPLoss(config.distillation.distill_method, config.distillation.fine_method)

    with TeacherCache.open(config.cache.path) as cache:
        tables = TrainingTables.from_cache(cache)
    dataset = ScheduleDataset(tables, slice(None), config.datasets.video_path, frame_settings(config, "train"), {},
                              None, 0, cache_path=config.cache.path, use_cached_frames=True,
                              read_targets=mode == "cached")
    loader = DataLoader(dataset, batch_size=None, sampler=list(range(steps)))

    seconds = []
    started = time.perf_counter()
    for batch in loader:
        if mode == "cached":
            teacher_logits, teacher_frames = list(batch["teacher_logits"]), list(batch["teacher_frames"])
        elif mode == "online":
            teacher_logits, teacher_frames = online_targets(teachers, batch, device)
        else:
            teacher_logits, teacher_frames = [], []
        logits, frame_weights = student_logits(model, batch, device)
        loss_fn(logits, frame_weights, teacher_logits, teacher_frames).total.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
    return seconds[WARMUP_STEPS:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="steps timed per mode (the first 2 are warm-up)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the three modes take turns")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as directory:
        config = prepare(Path(directory), args.batch_size)
        teachers = ", ".join(spec.name for spec in config.distillation.teachers)
        # Modes take turns over several rounds, so a slow spell of the machine hits all of them.
        seconds: dict[str, list[float]] = {"none": [], "cached": [], "online": []}
        for _ in range(args.rounds):
            for mode in seconds:
                seconds[mode] += time_mode(config, mode, args.steps)
        results = {mode: statistics.median(values) for mode, values in seconds.items()}

    print(f"teachers: {teachers}; batch {args.batch_size}, {MAX_FRAMES} frames, tiny models, "
          f"{torch.get_num_threads()} torch threads; median seconds per step over "
          f"{args.rounds} x {args.steps - WARMUP_STEPS} steps")
    for mode, seconds in results.items():
        print(f"{mode:<7} {seconds:.3f} s/step")
    print(f"online / cached: {results['online'] / results['cached']:.2f}x  (target at least 1.5x)")
    print(f"cached / none:   {results['cached'] / results['none']:.3f}  (target at most 1.10)")


if __name__ == "__main__":
    main()
