"""Stage one's cost against epochs: precompute for 1 and for 5 epochs on the bundled clips.

Each unique video and text is encoded once whatever the number of epochs, so only the teachers'
pairwise heads run once per scheduled batch. The reference runs the full teachers at every step,
so its teacher cost grows with the epochs (5 times for 5 epochs).
Usage: python benchmarks/bench_precompute.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import build_config
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.teachers import save_tiny_teacher
from stages.demo import DEMO_MAX_FRAMES, DEMO_MAX_WORDS, demo_config_dict, write_tiny_clip
from stages.precompute import run_precompute

TEACHERS = ("xclip", "ts2net")


def precompute_seconds(directory: Path, epochs: int) -> tuple[float, int]:
    models = directory / "models"
    clip_path = write_tiny_clip(models / "tiny-clip.pt")
    data = demo_config_dict(directory, clip_path, models / "unused.bin", epochs=epochs, backend="zarr")
    data["distillation"]["teachers"] = [
        {"name": name, "checkpoint": str(save_tiny_teacher(name, models / f"tiny-{name}.bin", CLIP_PRESETS["tiny"],
                                                          max_words=DEMO_MAX_WORDS, max_frames=DEMO_MAX_FRAMES,
                                                          seed=1))}
        for name in TEACHERS
    ]
    data["cache"]["store_frames"] = False
    config = build_config(data)

    started = time.perf_counter()
    result = run_precompute(config)
    return time.perf_counter() - started, result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the longer run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        precompute_seconds(Path(first) / "warm-up", 1)  # imports and decoder start-up outside the timings
        one_epoch, one_steps = precompute_seconds(Path(first) / "one", 1)
        many_epochs, many_steps = precompute_seconds(Path(second), args.epochs)

    print(f"teachers: {', '.join(TEACHERS)} (tiny, random); {torch.get_num_threads()} torch threads")
    print(f"1 epoch:  {one_steps:4d} steps, {one_epoch:6.1f} s")
    print(f"{args.epochs} epochs: {many_steps:4d} steps, {many_epochs:6.1f} s")
    print(f"ratio {args.epochs} epochs / 1 epoch: {many_epochs / one_epoch:.2f}x (target at most 1.3x; "
          f"online teachers: {args.epochs}x)")


if __name__ == "__main__":
    main()
