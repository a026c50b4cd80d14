"""Frame sampling and preprocessing of CLIP4Clip's raw-video extractor: which frames of a video
are used, and how each becomes an image_size x image_size RGB uint8 image.

Decoding lives in `decoders.py`, file lookup and the decoding entry point in `videos.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM = 0, 1, 2
ORDER_KEEP, ORDER_REVERSE, ORDER_SHUFFLE = 0, 1, 2
ALL_FRAMES = 0  # feature_framerate 0 makes the reference take every frame of every second

# Names that callers import from this module but that live in videos.py, which decodes files.
# They resolve lazily (see __getattr__ below) because videos.py itself imports this module.
_DECODING_NAMES = frozenset({
    "find_video", "load_video_frames", "scan_videos", "ScanReport",
    "VideoDecodeError", "VideoNotFoundError",
})


@dataclass(frozen=True)
class FrameSettings:
    """Frame sampling and image settings, named as in CLIP4Clip's data loaders."""

    feature_framerate: int = 1  # frames per second of video; 0 takes every frame
    max_frames: int = 12
    slice_framepos: int = SLICE_UNIFORM  # 0 head, 1 tail, 2 uniform over the sampled frames
    frame_order: int = ORDER_KEEP  # 0 keep, 1 reverse, 2 shuffle with a caller-seeded generator
    image_size: int = 224

    def __post_init__(self) -> None:
        if not isinstance(self.feature_framerate, int) or self.feature_framerate < 0:
            raise ValueError(f"feature_framerate must be an integer >= 0, got {self.feature_framerate!r}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.slice_framepos not in (SLICE_HEAD, SLICE_TAIL, SLICE_UNIFORM):
            raise ValueError(f"slice_framepos must be 0 (head), 1 (tail) or 2 (uniform), got {self.slice_framepos}")
        if self.frame_order not in (ORDER_KEEP, ORDER_REVERSE, ORDER_SHUFFLE):
            raise ValueError(f"frame_order must be 0 (keep), 1 (reverse) or 2 (shuffle), got {self.frame_order}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")


@dataclass
class VideoFrames:
    """The frames of one video, ready for the model apart from CLIP normalisation."""

    frames: np.ndarray  # [max_frames, image_size, image_size, 3] uint8 RGB, zero after the real frames
    frame_mask: np.ndarray  # [max_frames] bool, True for real frames
    decoder: str  # "decord" or "ffmpeg"


def normalise_time_range(start_time: float | None, end_time: float | None) -> tuple[int | None, int | None]:
    """Turn a segment's start and end in seconds into the whole seconds the reference loaders use.

    As CLIP4Clip's ActivityNet and DiDeMo loaders do: truncate to int, clamp negatives to 0,
    swap a reversed pair, and widen an empty segment to one second. A missing start is 0; a
    missing end means the end of the video (None).
    """
    if start_time is None and end_time is None:
        return None, None

    start = max(int(start_time), 0) if start_time is not None else 0
    if end_time is None:
        return start, None
    end = max(int(end_time), 0)

    if start > end:
        start, end = end, start
    elif start == end:
        end = start + 1
    return start, end


def offsets_within_second(fps_int: int, feature_framerate: int) -> np.ndarray:
    """Return the frame offsets, from the first frame of a second, that one second contributes."""
    if feature_framerate == ALL_FRAMES:
        per_second, interval = fps_int, 1
    else:
        per_second, interval = feature_framerate, max(fps_int // feature_framerate, 1)

    offsets = np.arange(0, fps_int, interval)
    if len(offsets) < per_second:
        raise ValueError(
            f"feature_framerate {feature_framerate} is more than the video's {fps_int} frames per second; "
            "lower feature_framerate (the reference rejects this case too)"
        )
    return offsets[:per_second]


def sample_second_indices(frame_count: int, fps: float, feature_framerate: int,
                          start_time: int | None = None, end_time: int | None = None) -> np.ndarray:
    """Return the decoded-frame indices the reference reads, in time order, before the max_frames cut.

    The frame rate is truncated to an integer (29.97 becomes 29) and the duration is
    ceil(frame_count / fps_int) seconds. Seconds start..end, end included, each contribute
    `offsets_within_second` frames counted from frame second * fps_int. The reference stops at
    its first failed read, which is the first index at or past frame_count, so the indices are
    cut there. start_time and end_time are whole seconds (see `normalise_time_range`).
    """
    if frame_count < 0:
        raise ValueError(f"frame_count must be >= 0, got {frame_count}")
    fps_int = int(fps)
    if fps_int < 1:
        raise ValueError(f"the frame rate must be at least 1 frame per second, got {fps}")

    duration_s = (frame_count + fps_int - 1) // fps_int  # ceil in integers, as the reference computes it
    first_second = 0 if start_time is None else start_time
    last_second = duration_s if end_time is None else min(end_time, duration_s)

    seconds = np.arange(first_second, last_second + 1, dtype=np.int64)
    offsets = offsets_within_second(fps_int, feature_framerate)
    indices = (seconds[:, None] * fps_int + offsets[None, :]).reshape(-1)  # [seconds * offsets], increasing
    return indices[indices < frame_count]


def cut_to_max_frames(sampled_count: int, max_frames: int, slice_framepos: int) -> np.ndarray:
    """Return the positions, among `sampled_count` sampled frames, that are kept.

    At most max_frames: the first ones (head), the last ones (tail), or
    linspace(0, sampled_count - 1, max_frames) truncated to int (uniform).
    """
    if sampled_count <= max_frames:
        return np.arange(sampled_count)
    if slice_framepos == SLICE_HEAD:
        return np.arange(max_frames)
    if slice_framepos == SLICE_TAIL:
        return np.arange(sampled_count - max_frames, sampled_count)
    return np.linspace(0, sampled_count - 1, num=max_frames, dtype=int)


def select_frame_indices(frame_count: int, fps: float, settings: FrameSettings,
                         start_time: float | None = None, end_time: float | None = None) -> np.ndarray:
    """Return the decoded-frame indices of the frames a video contributes, after the max_frames cut."""
    start, end = normalise_time_range(start_time, end_time)
    sampled = sample_second_indices(frame_count, fps, settings.feature_framerate, start, end)
    return sampled[cut_to_max_frames(len(sampled), settings.max_frames, settings.slice_framepos)]


def frame_order_permutation(count: int, frame_order: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Return the permutation that puts `count` frames into the requested order.

    Shuffling draws from `rng`, which the caller seeds, so an offline cache stores the same
    order on every run. The reference shuffles with NumPy's global generator instead.
    """
    if frame_order == ORDER_KEEP:
        return np.arange(count)
    if frame_order == ORDER_REVERSE:
        return np.arange(count - 1, -1, -1)
    if rng is None:
        raise ValueError(
            "frame_order 2 (shuffle) needs a seeded generator; pass rng=np.random.default_rng(seed)"
        )
    return rng.permutation(count)


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """Return (width, height) after scaling the shorter side to image_size.

    The longer side is truncated to int, as torchvision's Resize(int) computes it.
    """
    if width <= height:
        return image_size, int(image_size * height / width)
    return int(image_size * width / height), image_size


def resize_and_center_crop(frame: np.ndarray, image_size: int) -> np.ndarray:
    """Resize an RGB frame [H, W, 3] uint8 so its shorter side is image_size, then center-crop a square.

    Bicubic resampling with PIL, and crop offsets rounded half to even, as torchvision's
    Resize(image_size, BICUBIC) and CenterCrop(image_size) do on a PIL image.
    """
    image = Image.fromarray(frame)
    width, height = resized_size(image.width, image.height, image_size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)

    top = int(round((height - image_size) / 2.0))
    left = int(round((width - image_size) / 2.0))
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image)  # [image_size, image_size, 3]


def pad_and_order_frames(frames: np.ndarray, settings: FrameSettings, decoder: str,
                         rng: np.random.Generator | None = None) -> VideoFrames:
    """Put the kept frames [count, S, S, 3] into settings' order, then zero-pad them to max_frames."""
    count = len(frames)
    if count == 0:
        raise ValueError("pad_and_order_frames needs at least one frame; a video without frames is an error")
    if count > settings.max_frames:
        raise ValueError(f"got {count} frames, more than max_frames {settings.max_frames}")

    size = settings.image_size
    padded = np.zeros((settings.max_frames, size, size, 3), dtype=np.uint8)  # [max_frames, S, S, 3]
    padded[:count] = frames[frame_order_permutation(count, settings.frame_order, rng)]

    frame_mask = np.zeros(settings.max_frames, dtype=bool)
    frame_mask[:count] = True
    return VideoFrames(frames=padded, frame_mask=frame_mask, decoder=decoder)


def __getattr__(name: str):
    """Resolve the decoding entry points of `videos.py` on first use (PEP 562)."""
    if name in _DECODING_NAMES:
        from pipeline.data import videos

        return getattr(videos, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
