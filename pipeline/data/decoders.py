"""Decoding backends: read the sampled frames of one video file with decord or with the ffmpeg program.

Both backends apply rotation metadata, sample with the reference's rule (`frames.py`) over the
frames that can actually be decoded, and return the kept frames resized and center-cropped.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.frames import (
    FrameSettings,
    cut_to_max_frames,
    resize_and_center_crop,
    sample_second_indices,
)

logger = logging.getLogger(__name__)

DECORD = "decord"
FFMPEG = "ffmpeg"
BACKENDS = (DECORD, FFMPEG)

UNREADABLE_VIDEO_HINT = (
    "check or re-encode the file, or pass --set datasets.on_missing_video=skip to leave it out"
)

# A reported frame rate above this is treated as broken metadata; videos play back far slower.
MAX_PLAUSIBLE_FPS = 1000.0
# Used only when neither the reported frame rate nor frame count / duration is usable;
# 25 is the PAL broadcast rate and lies between the common 24, 29.97 and 30.
FALLBACK_FPS = 25.0
# decord's own decoding threads per reader. One thread keeps seeks cheap and lets a pool of
# processes use the cores; 0 would let FFmpeg pick one thread per core in every reader.
DECORD_THREADS = 1
# Lines of ffmpeg's stderr quoted in an error message.
STDERR_LINES_IN_ERRORS = 2


class VideoDecodeError(RuntimeError):
    """A video file that exists but cannot be decoded, with the reason and what to do."""

    def __init__(self, path: str | Path, reason: str, hint: str = UNREADABLE_VIDEO_HINT):
        self.path = Path(path)
        self.reason = reason
        self.hint = hint
        super().__init__(f"cannot decode video {self.path}: {reason}; {hint}")

    def __reduce__(self):
        # Rebuilt from its fields, so it crosses the pipe from a decoding worker process intact.
        return (type(self), (str(self.path), self.reason, self.hint))


class SamplingError(VideoDecodeError):
    """The video decodes, but the frame settings select no frames from it; another decoder would not help."""


@dataclass(frozen=True)
class DecodedVideo:
    """The kept frames of one video in time order, before frame_order and padding."""

    frames: np.ndarray  # [count, image_size, image_size, 3] uint8, 1 <= count <= max_frames
    frame_indices: np.ndarray  # [count] decoded-frame index of each kept frame
    decoder: str
    frame_count: int  # frames the container reports
    fps: float  # frame rate the sampling used


def first_line(error: BaseException) -> str:
    """Return the first non-empty line of an exception's message (decord's messages run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def resolve_frame_rate(reported_fps: float, frame_count: int, duration_s: float | None, path: str | Path) -> float:
    """Return a usable frame rate (at least 1) for sampling, logging every correction.

    A reported rate that is missing, not finite, 0 or above MAX_PLAUSIBLE_FPS is replaced by
    frame_count / duration_s, or by FALLBACK_FPS when that is not usable either. Rates under 1
    become 1, so each frame counts as one second (the reference divides by zero there).
    """
    fps = reported_fps
    if not (math.isfinite(fps) and 0 < fps <= MAX_PLAUSIBLE_FPS):
        derived = frame_count / duration_s if duration_s and duration_s > 0 else 0.0
        if 0 < derived <= MAX_PLAUSIBLE_FPS:
            logger.warning("video %s reports frame rate %r; using %.3f from %d frames over %.3f s",
                           path, reported_fps, derived, frame_count, duration_s)
            fps = derived
        else:
            logger.warning("video %s reports frame rate %r and no usable duration; assuming %.0f fps",
                           path, reported_fps, FALLBACK_FPS)
            fps = FALLBACK_FPS

    if fps < 1:
        logger.warning("video %s has %.3f frames per second; sampling it as 1 fps (every frame)", path, fps)
        fps = 1.0
    return fps


def sample_kept_indices(path: str | Path, frame_count: int, decodable_count: int, fps: float,
                        settings: FrameSettings, start_s: int | None, end_s: int | None) -> np.ndarray:
    """Return the decoded-frame indices to read: the reference's rule, cut at decodable_count, then max_frames.

    The reference reads until its first failed read, so frames past the last decodable one
    end the sampling even when the container reports more.
    """
    try:
        sampled = sample_second_indices(frame_count, fps, settings.feature_framerate, start_s, end_s)
    except ValueError as error:  # feature_framerate above the video's frame rate
        raise SamplingError(path, str(error), hint="lower feature_framerate") from error

    sampled = sampled[sampled < decodable_count]
    if len(sampled) == 0:
        segment = f"the segment {start_s}-{end_s} s" if start_s is not None or end_s is not None else "the video"
        raise SamplingError(
            path,
            f"no frames in {segment}; the video has {decodable_count} decodable frames at {fps:.3f} fps",
            hint="check the segment times in the annotations",
        )
    return sampled[cut_to_max_frames(len(sampled), settings.max_frames, settings.slice_framepos)]


def resize_all(frames: np.ndarray, image_size: int) -> np.ndarray:
    """Resize and center-crop each decoded frame [count, H, W, 3] to [count, image_size, image_size, 3]."""
    return np.stack([resize_and_center_crop(frame, image_size) for frame in frames])


# decord ----------------------------------------------------------------------------------------


def decode_with_decord(path: str | Path, settings: FrameSettings, start_s: int | None = None,
                       end_s: int | None = None, num_threads: int = DECORD_THREADS) -> DecodedVideo:
    """Decode the kept frames with decord, seeking to each one.

    Raises ImportError when decord is not installed and VideoDecodeError when decord cannot
    open or read the file.
    """
    import decord

    decord_errors = (decord.DECORDError, RuntimeError, AssertionError)  # DECORDError is not a RuntimeError
    try:
        reader = decord.VideoReader(str(path), num_threads=num_threads)
        frame_count = len(reader)
        frame_times = decord_frame_times(reader)  # [indexed frames, 2] start and end seconds
        reported_fps = reader.get_avg_fps()
    except decord_errors as error:
        raise VideoDecodeError(path, f"decord failed to open the file ({first_line(error)})") from error

    duration_s = float(frame_times[-1, 1]) if len(frame_times) else None
    fps = resolve_frame_rate(reported_fps, frame_count, duration_s, path)

    # decord indexes every packet when it opens a file. A container that reports more frames
    # than it has packets makes get_batch spin at the nominal end, so reads stop at the last packet.
    # NOTE: a container that under-reports its frames is trusted. The reference reads past the
    # reported count there, but decord cannot, so such a video may lose its last sampled second.
    decodable_count = min(frame_count, len(frame_times)) if len(frame_times) else frame_count
    if decodable_count < frame_count:
        logger.warning("video %s: the container reports %d frames but has %d; sampling stops at frame %d",
                       path, frame_count, decodable_count, decodable_count)

    indices = sample_kept_indices(path, frame_count, decodable_count, fps, settings, start_s, end_s)
    try:
        batch = reader.get_batch(indices.tolist()).asnumpy()  # [count, H, W, 3]
    except decord_errors as error:
        raise VideoDecodeError(path, f"decord failed to read frames {indices.tolist()} ({first_line(error)})") from error

    # decord 0.6 rotates frames by the rotation metadata, but for some 90-degree cases it
    # returns a 4-channel view of a wrongly strided buffer instead of failing.
    if batch.ndim != 4 or batch.shape[0] != len(indices) or batch.shape[-1] != 3:
        raise VideoDecodeError(path, f"decord returned frames of shape {batch.shape} for {len(indices)} "
                                     "RGB frames (seen with rotated videos)")

    return DecodedVideo(frames=resize_all(batch, settings.image_size), frame_indices=indices,
                        decoder=DECORD, frame_count=frame_count, fps=fps)


def decord_frame_times(reader) -> np.ndarray:
    """Return the start and end time in seconds of every frame decord indexed [frames, 2]."""
    if len(reader) == 0:
        return np.zeros((0, 2))
    reader.get_frame_timestamp(0)  # fills the reader's cache of all frame times
    # NOTE: `_frame_pts` is a private attribute of decord 0.6.0 (the last release); without it
    # the container's frame count is trusted.
    frame_times = getattr(reader, "_frame_pts", None)
    return np.asarray(frame_times) if frame_times is not None else np.zeros((0, 2))


# ffmpeg ----------------------------------------------------------------------------------------


@functools.cache
def ffmpeg_executable() -> str:
    """Return the ffmpeg program on PATH, else the one the imageio-ffmpeg package ships."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise FileNotFoundError(
            "no ffmpeg program found: install ffmpeg on PATH or the imageio-ffmpeg package"
        ) from error


@dataclass(frozen=True)
class FFmpegProbe:
    """Stream facts that `ffmpeg -i` prints, plus the number of video packets in the file."""

    width: int  # after rotation, as ffmpeg outputs frames
    height: int
    reported_fps: float  # 0.0 when ffmpeg prints none
    duration_s: float | None
    packet_count: int
    rotation: float  # degrees, from the display matrix


_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_FRAME_SIZE = re.compile(r", (\d{1,5})x(\d{1,5})(?=[\s,\[]|$)")
_FRAME_RATE = re.compile(r"(\d+(?:\.\d+)?) fps")
_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
_FRAME_COUNTER = re.compile(r"frame=\s*(\d+)")


def stderr_tail(stderr: bytes | str) -> str:
    """Return ffmpeg's last few stderr lines on one line, for error messages."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-STDERR_LINES_IN_ERRORS:]) or "no message"


def run_ffmpeg(path: str | Path, args: list[str], timeout_s: float | None, step: str) -> subprocess.CompletedProcess:
    """Run ffmpeg, killing it after timeout_s; a timeout or a missing program is a VideoDecodeError."""
    try:
        return subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise VideoDecodeError(path, f"ffmpeg timed out after {timeout_s:g} s while {step}") from error
    except FileNotFoundError as error:
        raise VideoDecodeError(path, f"failed to run ffmpeg ({error})") from error


def probe_with_ffmpeg(path: str | Path, timeout_s: float | None = None) -> FFmpegProbe:
    """Read the first video stream's size, frame rate, duration and rotation, and count its packets."""
    args = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-i", str(path),
            "-map", "0:V:0", "-c", "copy", "-f", "null", "-"]
    result = run_ffmpeg(path, args, timeout_s, "counting packets")
    stderr = result.stderr.decode(errors="replace")

    stream = next((match for match in _VIDEO_STREAM.finditer(stderr)
                   if "(attached pic)" not in match.group("rest")), None)
    if result.returncode != 0 or stream is None:
        raise VideoDecodeError(path, f"ffmpeg found no readable video stream ({stderr_tail(stderr)})")

    size = _FRAME_SIZE.search(stream.group("rest"))
    if size is None:
        raise VideoDecodeError(path, f"ffmpeg printed no frame size for the video stream: {stream.group(0)!r}")
    width, height = int(size.group(1)), int(size.group(2))

    rotation_match = _ROTATION.search(stderr)
    rotation = float(rotation_match.group(1)) if rotation_match else 0.0
    if round(abs(rotation)) % 180 == 90:
        width, height = height, width  # ffmpeg rotates decoded frames upright by default

    fps_match = _FRAME_RATE.search(stream.group("rest"))
    duration = _DURATION.search(stderr)
    duration_s = (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
                  if duration else None)
    counters = _FRAME_COUNTER.findall(stderr)

    return FFmpegProbe(width=width, height=height, reported_fps=float(fps_match.group(1)) if fps_match else 0.0,
                       duration_s=duration_s, packet_count=int(counters[-1]) if counters else 0,
                       rotation=rotation)


def read_frames_with_ffmpeg(path: str | Path, indices: np.ndarray, width: int, height: int,
                            timeout_s: float | None = None) -> np.ndarray:
    """Decode the frames at the given increasing indices as RGB [count, height, width, 3].

    ffmpeg decodes from the start up to the last index but converts and outputs only the selected
    frames, so memory contains at most len(indices) frames. Returns fewer frames than requested
    when decoding stops early (a truncated file).
    """
    # NOTE: no seeking, so time grows with the position of the last kept frame; decord seeks.
    import ffmpeg

    selection = "+".join(f"eq(n,{index})" for index in indices.tolist())
    stream = (
        ffmpeg.input(str(path))["V:0"]
        .filter("select", selection)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough",
                **{"frames:v": len(indices)})
        .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
    )
    result = run_ffmpeg(path, ffmpeg.compile(stream, cmd=ffmpeg_executable()), timeout_s, "decoding frames")

    frame_bytes = width * height * 3
    count = len(result.stdout) // frame_bytes
    if count == 0:
        raise VideoDecodeError(path, f"ffmpeg decoded none of frames {indices.tolist()} "
                                     f"(exit code {result.returncode}: {stderr_tail(result.stderr)})")
    if len(result.stdout) % frame_bytes:
        logger.warning("video %s: ffmpeg output ends in a partial frame; dropped it", path)
    return np.frombuffer(result.stdout[:count * frame_bytes], dtype=np.uint8).reshape(count, height, width, 3)


def count_decoded_frames_with_ffmpeg(path: str | Path, timeout_s: float | None = None) -> int:
    """Decode the whole first video stream and return how many frames came out."""
    args = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:V:0", "-f", "null", "-"]
    result = run_ffmpeg(path, args, timeout_s, "counting decodable frames")
    counters = _FRAME_COUNTER.findall(result.stderr.decode(errors="replace"))
    return int(counters[-1]) if counters else 0


def decode_with_ffmpeg(path: str | Path, settings: FrameSettings, start_s: int | None = None,
                       end_s: int | None = None, timeout_s: float | None = None) -> DecodedVideo:
    """Decode the kept frames with the ffmpeg program; each ffmpeg run is killed after timeout_s.

    A file that stops decoding early (truncated) keeps the frames before the failure, as the
    reference's OpenCV loop does, and the sampling is redone over the frames that decode.
    """
    try:
        probe = probe_with_ffmpeg(path, timeout_s)
    except FileNotFoundError as error:  # no ffmpeg program at all
        raise VideoDecodeError(path, str(error)) from error

    frame_count = probe.packet_count
    if frame_count == 0:
        raise VideoDecodeError(path, "ffmpeg found no packets in the video stream")
    fps = resolve_frame_rate(probe.reported_fps, frame_count, probe.duration_s, path)
    indices = sample_kept_indices(path, frame_count, frame_count, fps, settings, start_s, end_s)
    frames = read_frames_with_ffmpeg(path, indices, probe.width, probe.height, timeout_s)

    if len(frames) < len(indices):
        decodable_count = count_decoded_frames_with_ffmpeg(path, timeout_s)
        logger.warning("video %s: decoding stops after %d of %d frames (truncated or corrupt file); "
                       "keeping the frames before that point, as the reference does",
                       path, decodable_count, frame_count)
        indices = sample_kept_indices(path, frame_count, decodable_count, fps, settings, start_s, end_s)
        frames = read_frames_with_ffmpeg(path, indices, probe.width, probe.height, timeout_s)
        if len(frames) < len(indices):
            raise VideoDecodeError(path, f"ffmpeg decoded {decodable_count} frames in one pass but not "
                                         f"frames {indices[len(frames):].tolist()} in another")

    return DecodedVideo(frames=resize_all(frames, settings.image_size), frame_indices=indices,
                        decoder=FFMPEG, frame_count=frame_count, fps=fps)


def decode_with(backend: str, path: str | Path, settings: FrameSettings, start_s: int | None = None,
                end_s: int | None = None, timeout_s: float | None = None) -> DecodedVideo:
    """Decode with the named backend in this process; timeout_s limits ffmpeg runs only."""
    if backend == DECORD:
        return decode_with_decord(path, settings, start_s, end_s)
    if backend == FFMPEG:
        return decode_with_ffmpeg(path, settings, start_s, end_s, timeout_s)
    raise ValueError(f"unknown decoder {backend!r}; use one of {BACKENDS} or 'auto'")
