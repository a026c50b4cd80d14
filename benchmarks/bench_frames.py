"""Frame extraction speed: this pipeline's decoders against CLIP4Clip's OpenCV extractor, on the demo clips.

Run from the repository root:  .venv/bin/python benchmarks/bench_frames.py
The OpenCV method needs opencv-python-headless, which the package does not depend on:
    .venv/bin/pip install opencv-python-headless
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.decoders import decode_with  # noqa: E402
from pipeline.data.frames import FrameSettings, cut_to_max_frames, resize_and_center_crop  # noqa: E402
from pipeline.data.videos import DecodePool, VideoRequest, load_many, load_video_frames  # noqa: E402

logger = logging.getLogger("bench_frames")

DEMO_VIDEOS = REPO / "pipeline" / "demo_data" / "videos"
SETTINGS = FrameSettings(feature_framerate=1, max_frames=12, slice_framepos=2)


def opencv_reference_frames(path: Path, settings: FrameSettings) -> np.ndarray:
    """Extract frames the way CLIP4Clip's RawVideoExtractorCV2 does, before normalisation.

    Seek with CAP_PROP_POS_FRAMES to the first frame of every second and read it until a read
    fails, convert BGR to RGB, resize and center-crop every sampled frame with PIL, then keep
    max_frames of them by slice_framepos. Only feature_framerate 1 is reproduced here.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = int(capture.get(cv2.CAP_PROP_FPS))
    duration_s = (frame_count + fps - 1) // fps

    images = []
    for second in range(duration_s + 1):
        capture.set(cv2.CAP_PROP_POS_FRAMES, second * fps)
        ok, frame = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        images.append(resize_and_center_crop(np.asarray(Image.fromarray(rgb).convert("RGB")), settings.image_size))
    capture.release()

    sampled = np.stack(images)  # [sampled, S, S, 3]
    return sampled[cut_to_max_frames(len(sampled), settings.max_frames, settings.slice_framepos)]


def _reference_one(path: Path) -> int:
    return len(opencv_reference_frames(path, SETTINGS))


def run_reference(paths: list[Path], processes: int) -> None:
    if processes == 1:
        for path in paths:
            _reference_one(path)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_reference_one, paths, chunksize=1)


def run_in_process(paths: list[Path], decoder: str) -> None:
    for path in paths:
        load_video_frames(path, SETTINGS, decoder=decoder)


def run_pool(paths: list[Path], pool: DecodePool) -> None:
    for result in load_many([VideoRequest(path) for path in paths], SETTINGS, pool=pool):
        if result.error is not None:
            raise result.error


def cpu_seconds(worker_pids: list[int]) -> float:
    """Return CPU seconds used so far by this process, its finished children and the given workers."""
    total = 0.0
    for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)):
        total += usage.ru_utime + usage.ru_stime
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    for pid in worker_pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime and stime, fields 14 and 15
    return total


def best_times_s(methods: list[tuple[str, object]], rounds: int, worker_pids: list[int]) -> dict[str, tuple[float, float]]:
    """Time each method `rounds` times, taking turns so that changing machine load hits all of
    them alike. Return each method's fastest wall time and its least CPU time, in seconds."""
    best = {name: (float("inf"), float("inf")) for name, _ in methods}
    for _ in range(rounds):
        for name, run in methods:
            cpu_started, started = cpu_seconds(worker_pids), time.perf_counter()
            run()
            wall_s, cpu_s = time.perf_counter() - started, cpu_seconds(worker_pids) - cpu_started
            best[name] = (min(best[name][0], wall_s), min(best[name][1], cpu_s))
    return best


def check_parity(paths: list[Path]) -> tuple[int, int]:
    """Count the clips whose decord and ffmpeg frames equal the OpenCV reference's, bit for bit."""
    decord_equal = ffmpeg_equal = 0
    for path in paths:
        reference = opencv_reference_frames(path, SETTINGS)
        decord_equal += int(np.array_equal(decode_with("decord", path, SETTINGS).frames, reference))
        ffmpeg_equal += int(np.array_equal(decode_with("ffmpeg", path, SETTINGS).frames, reference))
    return decord_equal, ffmpeg_equal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=DEMO_VIDEOS, help="folder of .mp4 clips")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per method; the fastest counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the pooled methods (default: one per CPU core)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        import cv2
    except ImportError:
        print("opencv-python-headless is not installed, so the reference method cannot run; install it "
              "with `.venv/bin/pip install opencv-python-headless` (the package itself does not need it)")
        return 1

    paths = sorted(args.videos.glob("*.mp4"))
    if not paths:
        print(f"no .mp4 clips under {args.videos}")
        return 1

    print(f"{len(paths)} clips under {args.videos}; {os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; "
          f"OpenCV {cv2.__version__}; best of {args.rounds} rounds")
    decord_equal, ffmpeg_equal = check_parity(paths)
    print(f"frames equal to the OpenCV reference, bit for bit: decord {decord_equal}/{len(paths)}, "
          f"ffmpeg {ffmpeg_equal}/{len(paths)}")

    with DecodePool(workers=args.workers) as pool:
        run_pool(paths[:args.workers], pool)  # starts the worker processes outside the timing
        methods = [
            ("reference: OpenCV seek per second, 1 process", lambda: run_reference(paths, 1)),
            (f"reference: OpenCV seek per second, {args.workers} processes", lambda: run_reference(paths, args.workers)),
            ("pipeline: decord, kept frames only, 1 process", lambda: run_in_process(paths, "decord")),
            ("pipeline: ffmpeg fallback, 1 process", lambda: run_in_process(paths, "ffmpeg")),
            (f"pipeline: decord, DecodePool of {args.workers} workers", lambda: run_pool(paths, pool)),
        ]
        load_before = os.getloadavg()[0]
        timings = best_times_s(methods, args.rounds, pool.worker_pids)
        load_after = os.getloadavg()[0]

    reference_wall_s, reference_cpu_s = timings[methods[0][0]]
    print()
    print("| method | wall s | videos/s | vs reference | CPU s per video | vs reference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, _ in methods:
        wall_s, cpu_s = timings[name]
        print(f"| {name} | {wall_s:.2f} | {len(paths) / wall_s:.1f} | {reference_wall_s / wall_s:.2f}x "
              f"| {cpu_s / len(paths):.3f} | {reference_cpu_s / cpu_s:.2f}x |")
    print(f"\nreference = OpenCV in 1 process; 1-minute load average {load_before:.1f} before, {load_after:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
