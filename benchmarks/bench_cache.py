"""Benchmark the teacher cache: write and read a full-size synthetic store in zarr and HDF5.

The default size is an MSR-VTT 9k schedule: 15,000 steps of batch 120 and 12 frames,
two teachers, float16 targets; no model runs. `--steps` shrinks it for a quick run.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cache import CacheLayout, Fingerprint, TeacherCache

logger = logging.getLogger(__name__)

# MSR-VTT 9k training split: 9,000 videos with 20 captions each, one sample per caption.
NUM_VIDEOS = 9_000
NUM_TEXTS = 180_000
MAX_WORDS = 32

# Distinct synthetic step targets, cycled through so that generating them does not
# dominate the write timing while the data still looks random to the compressors.
TARGET_POOL = 64

# Read time budget per step that stage two should stay under.
READ_TARGET_MS = 5.0


def synthetic_pool(batch_size: int, max_frames: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return float32 (logits, frame targets) pairs shaped like a teacher's output for one step."""
    pool = []
    for _ in range(TARGET_POOL):
        logits = (rng.standard_normal((batch_size, batch_size)) * 10).astype(np.float32)
        scores = rng.standard_normal((batch_size, max_frames))
        frame_targets = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)  # [batch, frames]
        pool.append((logits, frame_targets.astype(np.float32)))
    return pool


def write_inputs(cache: TeacherCache, layout: CacheLayout, rng: np.random.Generator) -> None:
    cache.write_samples(np.arange(layout.num_samples) % layout.num_texts,
                        np.arange(layout.num_samples) % layout.num_videos)
    cache.write_texts([f"video{i // 20}#{i % 20}" for i in range(layout.num_texts)],
                      rng.integers(0, 49408, (layout.num_texts, layout.max_words)),
                      np.ones((layout.num_texts, layout.max_words), dtype=bool))
    cache.write_videos([f"video{i}" for i in range(layout.num_videos)],
                       np.ones((layout.num_videos, layout.max_frames), dtype=bool))
    cache.write_schedule(rng.integers(0, layout.num_samples, (layout.num_steps, layout.batch_size)))


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def bench_backend(backend: str, directory: Path, args: argparse.Namespace) -> dict:
    """Write a store, finalize it, then time random single-step reads; return the figures."""
    rng = np.random.default_rng(args.seed)
    teachers = tuple(f"teacher{i}" for i in range(args.teachers))
    layout = CacheLayout(num_samples=NUM_TEXTS, num_texts=NUM_TEXTS, max_words=MAX_WORDS, num_videos=NUM_VIDEOS,
                         max_frames=args.frames, num_steps=args.steps, batch_size=args.batch,
                         teacher_names=teachers, target_dtype=args.dtype)
    path = directory / f"bench{'.h5' if backend == 'hdf5' else '.zarr'}"
    pool = synthetic_pool(args.batch, args.frames, rng)

    started = time.perf_counter()
    cache = TeacherCache.create(path, layout, Fingerprint({"benchmark": True}), backend=backend)
    write_inputs(cache, layout, rng)
    inputs_s = time.perf_counter() - started

    started = time.perf_counter()
    for step in range(layout.num_steps):
        for teacher_number, teacher in enumerate(teachers):
            cache.write_step(teacher, step, *pool[(step + teacher_number) % TARGET_POOL])
        if step and step % args.log_every == 0:
            rate = step / (time.perf_counter() - started)
            logger.info("%s: %d of %d steps written, %.0f steps/s", backend, step, layout.num_steps, rate)
    steps_s = time.perf_counter() - started

    started = time.perf_counter()
    cache.finalize()
    cache.close()
    finalize_s = time.perf_counter() - started

    read_ms = []
    with TeacherCache.open(path) as cache:
        cache.read_step(0)  # first read opens the arrays
        for step in rng.integers(0, layout.num_steps, args.reads):
            started = time.perf_counter()
            cache.read_step(int(step))
            read_ms.append((time.perf_counter() - started) * 1000)

    figures = {
        "backend": backend,
        "steps": layout.num_steps,
        "teachers": len(teachers),
        "batch": args.batch,
        "frames": args.frames,
        "dtype": args.dtype,
        "size_on_disk_mib": disk_bytes(path) / 2**20,
        "inputs_write_s": inputs_s,
        "steps_write_s": steps_s,
        "write_steps_per_s": layout.num_steps / steps_s,
        "finalize_s": finalize_s,
        "read_step_median_ms": statistics.median(read_ms),
        "read_step_p95_ms": float(np.percentile(read_ms, 95)),
    }
    if not args.keep:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15_000, help="schedule steps to write (default 15000)")
    parser.add_argument("--batch", type=int, default=120, help="batch size (default 120)")
    parser.add_argument("--frames", type=int, default=12, help="frames per video (default 12)")
    parser.add_argument("--teachers", type=int, default=2, help="number of teachers (default 2)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="target dtype")
    parser.add_argument("--backend", choices=("zarr", "hdf5", "both"), default="both", help="backend(s) to run")
    parser.add_argument("--reads", type=int, default=500, help="random single-step reads to time (default 500)")
    parser.add_argument("--dir", default=None, help="directory for the stores (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the stores instead of deleting them")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--log-every", type=int, default=1000, help="log progress every this many steps")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_cache_"))
    directory.mkdir(parents=True, exist_ok=True)
    backends = ("zarr", "hdf5") if args.backend == "both" else (args.backend,)
    results = [bench_backend(backend, directory, args) for backend in backends]
    if not args.dir and not args.keep:
        shutil.rmtree(directory)

    if args.json:
        print(json.dumps({"machine": platform.platform(), "results": results}, indent=2))
        return
    print(f"{args.steps} steps x {args.teachers} teachers, batch {args.batch}, {args.frames} frames, {args.dtype}")
    for result in results:
        verdict = "within" if result["read_step_median_ms"] < READ_TARGET_MS else "over"
        print(f"{result['backend']:5s} size {result['size_on_disk_mib']:8.1f} MiB | "
              f"write {result['write_steps_per_s']:6.0f} steps/s ({result['steps_write_s']:.0f} s) | "
              f"inputs {result['inputs_write_s']:.1f} s | finalize {result['finalize_s']:.1f} s | "
              f"read_step median {result['read_step_median_ms']:.2f} ms, p95 {result['read_step_p95_ms']:.2f} ms "
              f"({verdict} the {READ_TARGET_MS:.0f} ms target)")


if __name__ == "__main__":
    main()
