"""Decoding real files written by ffmpeg: codecs, containers, frame rates, rotation, damaged and
missing files, time limits, the worker pool and the pre-flight scan.

Each test clip shows its frame number as eight horizontal bands (band i white when bit i is set),
so the test can read which frame a decoder returned.
"""

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from pipeline.data.decoders import SamplingError, VideoDecodeError, decode_with, resolve_frame_rate
from pipeline.data.frames import FrameSettings
from pipeline.data.videos import (
    DecodePool,
    VideoNotFoundError,
    VideoRequest,
    find_video,
    load_many,
    load_video_frames,
    scan_videos,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
BITS = 8
BAND_ROWS = 6  # rows per bit band in a 48-row clip
# Luma of each row: 235 (white) when the frame number's bit for that row's band is set, else 16.
NUMBERED_FRAMES = "geq=lum='16+219*mod(floor(N/pow(2\\,floor(Y/{rows})))\\,2)':cb=128:cr=128"
SETTINGS = FrameSettings(feature_framerate=1, max_frames=12, slice_framepos=2)

# A 64x48 frame becomes 298x224 then a 224 crop, so bit band i covers output rows 28i..28i+27.
OUTPUT_BAND_ROWS = 224 // BITS


def write_clip(path: Path, fps: str, frame_count: int, codec: list[str], size: str = "64x48",
               source: str | None = None, output_args: tuple[str, ...] = ()) -> Path:
    """Write a clip whose frames show their own number; fps is an ffmpeg rate such as 30000/1001."""
    source = source or f"nullsrc=s={size}:r={fps}," + NUMBERED_FRAMES.format(rows=BAND_ROWS)
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
         "-frames:v", str(frame_count), *codec, "-pix_fmt", "yuv420p", *output_args, str(path)],
        check=True,
    )
    return path


def frame_number(frame: np.ndarray) -> int:
    """Read the number a decoded 224x224 frame shows in its bit bands."""
    number = 0
    for bit in range(BITS):
        band = frame[bit * OUTPUT_BAND_ROWS + 8:(bit + 1) * OUTPUT_BAND_ROWS - 8, 64:160]  # band centre
        if band.mean() > 128:
            number |= 1 << bit
    return number


def shown_numbers(video) -> list[int]:
    return [frame_number(frame) for frame, real in zip(video.frames, video.frame_mask) if real]


H264 = ["-c:v", "libx264", "-g", "12"]  # a key frame every 12 frames, so seeks cross key frames
MPEG4 = ["-c:v", "mpeg4", "-q:v", "2", "-g", "12"]
VP9 = ["-c:v", "libvpx-vp9", "-b:v", "300k", "-g", "12"]

# (file name, codec, ffmpeg frame rate, frames, expected indices worked out by hand:
# seconds 0..ceil(frames / int(fps)), frame second * int(fps), below the frame count).
CLIPS = [
    ("h264_30.mp4", H264, "30", 150, [0, 30, 60, 90, 120]),
    ("mpeg4_25.avi", MPEG4, "25", 130, [0, 25, 50, 75, 100, 125]),
    ("vp9_2997.webm", VP9, "30000/1001", 200, [0, 29, 58, 87, 116, 145, 174]),
    ("h264_60.mkv", H264, "60", 240, [0, 60, 120, 180]),
    ("h264_15.mp4", H264, "15", 100, [0, 15, 30, 45, 60, 75, 90]),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {name: write_clip(folder / name, fps, count, codec) for name, codec, fps, count, _ in CLIPS}


@pytest.mark.parametrize("decoder", ["decord", "ffmpeg"])
@pytest.mark.parametrize("name, expected", [(name, expected) for name, _, _, _, expected in CLIPS])
def test_codecs_decode_expected_frames(clips, name, expected, decoder):
    video = load_video_frames(clips[name], SETTINGS, decoder=decoder)
    assert video.decoder == decoder
    assert video.frame_mask.sum() == len(expected)
    assert shown_numbers(video) == expected


def test_uniform_cut_on_long_clip(tmp_path):
    # 250 frames at 25 fps: seconds 0..9 give 10 frames, cut to 4 by int(k * 9 / 3) = 0, 3, 6, 9.
    path = write_clip(tmp_path / "long.mp4", "25", 250, H264)
    settings = FrameSettings(max_frames=4, slice_framepos=2)
    for decoder in ("decord", "ffmpeg"):
        video = load_video_frames(path, settings, decoder=decoder)
        assert shown_numbers(video) == [0, 75, 150, 225], decoder


def test_segment_restricts_frames(tmp_path):
    path = write_clip(tmp_path / "segment.mp4", "25", 250, H264)
    video = load_video_frames(path, SETTINGS, start_time=3.4, end_time=6.9)
    assert shown_numbers(video) == [75, 100, 125, 150]


def test_segment_past_end_raises(tmp_path):
    path = write_clip(tmp_path / "short.mp4", "25", 100, H264)
    with pytest.raises(SamplingError, match="no frames in the segment 20-30 s"):
        load_video_frames(path, SETTINGS, start_time=20, end_time=30)


def test_one_frame_clip(tmp_path):
    path = write_clip(tmp_path / "one.mp4", "30", 1, H264)
    for decoder in ("decord", "ffmpeg"):
        video = load_video_frames(path, SETTINGS, decoder=decoder)
        assert video.frame_mask.tolist() == [True] + [False] * 11, decoder
        assert shown_numbers(video) == [0], decoder
        assert not video.frames[1:].any(), decoder


def test_shuffle_is_seeded(clips):
    settings = FrameSettings(frame_order=2)
    first = load_video_frames(clips["h264_30.mp4"], settings, rng=np.random.default_rng(3))
    second = load_video_frames(clips["h264_30.mp4"], settings, rng=np.random.default_rng(3))
    assert sorted(shown_numbers(first)) == [0, 30, 60, 90, 120]
    assert shown_numbers(first) == shown_numbers(second)


# Rotation ------------------------------------------------------------------------------------------

# Red where the row is in the top half, green where the column is in the left half.
QUADRANTS = "nullsrc=s={size}:r=25,format=rgb24,geq=r='255*lt(Y\\,H/2)':g='255*lt(X\\,W/2)':b=0"


def write_rotated_clip(folder: Path, width: int, height: int, transpose: str, rotation: str) -> Path:
    """Store the width x height quadrant picture transposed, with display-rotation metadata that undoes it."""
    stored = write_clip(folder / "stored.mp4", "25", 60, H264,
                        source=QUADRANTS.format(size=f"{width}x{height}") + f",transpose={transpose}")
    rotated = folder / "rotated.mp4"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-display_rotation:v:0", rotation,
                    "-i", str(stored), "-c", "copy", str(rotated)], check=True)
    return rotated


def assert_upright(frame: np.ndarray) -> None:
    top, bottom, left, right = slice(20, 90), slice(134, 204), slice(20, 90), slice(134, 204)
    red, green = frame[..., 0], frame[..., 1]
    assert red[top, left].mean() > 200  # top left: red and green
    assert green[top, left].mean() > 200
    assert red[top, right].mean() > 200  # top right: red only
    assert green[top, right].mean() < 50
    assert red[bottom, left].mean() < 50  # bottom left: green only
    assert green[bottom, left].mean() > 200
    assert red[bottom, right].mean() < 50  # bottom right: black
    assert green[bottom, right].mean() < 50


# Phone-style portrait (stored landscape, shown portrait) and the reverse. With decord 0.6.0 the
# 48x64 portrait case fails in get_batch, so 'auto' falls back to ffmpeg; decord rotates the others.
@pytest.mark.parametrize("width, height, transpose, rotation", [
    (48, 64, "clock", "90"),
    (54, 96, "clock", "90"),
    (64, 48, "cclock", "-90"),
])
def test_rotated_clip_comes_out_upright(tmp_path, width, height, transpose, rotation):
    path = write_rotated_clip(tmp_path, width, height, transpose, rotation)
    for decoder in ("auto", "ffmpeg"):
        video = load_video_frames(path, SETTINGS, decoder=decoder)
        assert video.frame_mask.sum() == 3, decoder  # 60 frames at 25 fps: frames 0, 25, 50
        for frame in video.frames[:3]:
            assert_upright(frame)


# Damaged and missing files -----------------------------------------------------------------------


def decodable_frame_count(path: Path) -> int:
    """Count the frames ffmpeg decodes from a file, independently of the code under test."""
    result = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
                            capture_output=True, text=True)
    return int(result.stderr.rsplit("frame=", 1)[1].split()[0])


def write_truncated_clip(folder: Path) -> Path:
    """Write a 150-frame clip with its index at the front, then keep only its first 60 percent of bytes."""
    complete = write_clip(folder / "complete.mp4", "30", 150, H264, output_args=("-movflags", "+faststart"))
    cut = folder / "cut.mp4"
    data = complete.read_bytes()
    cut.write_bytes(data[:len(data) * 6 // 10])
    return cut


def test_truncated_file_keeps_early_frames(tmp_path):
    path = write_truncated_clip(tmp_path)
    decodable = decodable_frame_count(path)
    assert 0 < decodable < 150

    video = load_video_frames(path, SETTINGS)
    assert video.decoder == "ffmpeg"  # decord 0.6 fails to open such files
    assert shown_numbers(video) == [index for index in (0, 30, 60, 90, 120) if index < decodable]


def test_truncated_file_resampled_and_logged(tmp_path, caplog):
    # Every frame is sampled, so the first read requests frames past the cut and returns fewer.
    path = write_truncated_clip(tmp_path)
    decodable = decodable_frame_count(path)
    settings = FrameSettings(feature_framerate=0, max_frames=150, slice_framepos=0)

    with caplog.at_level(logging.WARNING):
        video = load_video_frames(path, settings)
    assert shown_numbers(video) == list(range(decodable))
    assert "falling back to ffmpeg" in caplog.text
    assert f"decoding stops after {decodable} of" in caplog.text


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoDecodeError) as error:
        load_video_frames(path, SETTINGS)
    assert str(path) in str(error.value)
    assert "empty (0 bytes)" in str(error.value)
    assert "on_missing_video=skip" in str(error.value)


def test_text_file_raises_with_reasons(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(VideoDecodeError) as error:
        load_video_frames(path, SETTINGS)
    message = str(error.value)
    assert str(path) in message
    assert "decord failed to open the file" in message
    assert "ffmpeg found no readable video stream" in message
    assert "on_missing_video=skip" in message


def test_missing_file_raises(tmp_path):
    path = tmp_path / "gone.mp4"
    with pytest.raises(VideoNotFoundError) as error:
        load_video_frames(path, SETTINGS)
    assert str(path) in str(error.value)
    assert "on_missing_video=skip" in str(error.value)


def test_frame_rate_corrections():
    assert resolve_frame_rate(29.97, 300, 10.0, "a.mp4") == 29.97
    assert resolve_frame_rate(0.0, 100, 4.0, "a.mp4") == 25.0  # 100 frames over 4 s
    assert resolve_frame_rate(float("nan"), 100, 4.0, "a.mp4") == 25.0
    assert resolve_frame_rate(90000.0, 50, 2.0, "a.mp4") == 25.0
    assert resolve_frame_rate(0.0, 100, None, "a.mp4") == 25.0  # FALLBACK_FPS
    assert resolve_frame_rate(0.5, 10, 20.0, "a.mp4") == 1.0  # each frame its own second


def test_missing_decord_uses_ffmpeg(clips):
    # A fresh interpreter in which `import decord` fails, as where decord has no wheel.
    script = (
        "import sys, logging; sys.modules['decord'] = None; logging.basicConfig(level=logging.WARNING)\n"
        "from pipeline.data.frames import FrameSettings\n"
        "from pipeline.data.videos import load_video_frames\n"
        f"video = load_video_frames({str(clips['h264_30.mp4'])!r}, FrameSettings())\n"
        "print(video.decoder, int(video.frame_mask.sum()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert result.stdout.split() == ["ffmpeg", "5"]
    assert "decord is not installed" in result.stderr


# Finding files -----------------------------------------------------------------------------------


def test_find_video_extension_order(tmp_path):
    (tmp_path / "clip.avi").write_bytes(b"x")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    (tmp_path / "bare").write_bytes(b"x")
    (tmp_path / "named.webm").write_bytes(b"x")
    assert find_video(tmp_path, "clip") == tmp_path / "clip.mp4"
    assert find_video(tmp_path, "bare") == tmp_path / "bare"
    assert find_video(tmp_path, "named.webm") == tmp_path / "named.webm"
    assert find_video(tmp_path, "named") == tmp_path / "named.webm"


def test_find_video_not_found_message(tmp_path):
    with pytest.raises(VideoNotFoundError) as error:
        find_video(tmp_path, "video404")
    message = str(error.value)
    assert "'video404'" in message
    assert str(tmp_path) in message
    assert ".mp4, .avi, .webm, .mkv, .mov, no extension" in message
    assert "on_missing_video=skip" in message


@pytest.mark.parametrize("video_id", ["../secret", "a/../../secret", "/etc/passwd", "", ".."])
def test_find_video_rejects_escaping_ids(tmp_path, video_id):
    with pytest.raises(ValueError, match="invalid video id"):
        find_video(tmp_path / "videos", video_id)


# Time limits, the pool and the scan --------------------------------------------------------------


def test_hung_decoders_time_out(tmp_path):
    # Opening a FIFO that no process writes blocks inside the decoder's native code.
    fifo = tmp_path / "stalled.mkv"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(VideoDecodeError) as error:
        load_video_frames(fifo, SETTINGS, timeout_s=1.0)
    assert "decord timed out after 1 s" in str(error.value)
    assert "ffmpeg timed out after 1 s" in str(error.value)
    assert time.monotonic() - started < 20  # the decoders were killed, not waited for


def test_decord_timeout_falls_back(tmp_path, clips, caplog):
    # The FIFO gets its writer only after decord's limit, so decord is killed while blocked
    # and ffmpeg, which opens the FIFO once per run, reads the clip.
    fifo = tmp_path / "late.mkv"
    os.mkfifo(fifo)
    data = clips["h264_60.mkv"].read_bytes()
    stop = threading.Event()

    def write_late() -> None:
        time.sleep(3.0)
        while not stop.is_set():
            try:
                with open(fifo, "wb") as stream:
                    stream.write(data)
            except BrokenPipeError:
                pass  # ffmpeg stops reading once it has the frames it selected
            time.sleep(0.3)  # lets the reader see the end of the file before the next copy starts

    writer = threading.Thread(target=write_late, daemon=True)
    writer.start()
    try:
        with caplog.at_level(logging.WARNING):
            video = load_video_frames(fifo, SETTINGS, timeout_s=2.0)
    finally:
        stop.set()
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # releases a writer waiting for a reader
        time.sleep(0.1)
        os.close(reader)
        writer.join(timeout=5.0)
    assert video.decoder == "ffmpeg"
    assert shown_numbers(video) == [0, 60, 120, 180]
    assert "decord timed out after 2 s" in caplog.text


def test_load_many_keeps_request_order(tmp_path, clips):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    requests = [VideoRequest(clips["h264_30.mp4"]), VideoRequest(broken), VideoRequest(tmp_path / "gone.mp4"),
                VideoRequest(clips["h264_60.mkv"]), VideoRequest(clips["mpeg4_25.avi"], 1.0, 2.0)]
    with DecodePool(workers=2) as pool:
        results = list(load_many(requests, SETTINGS, pool=pool))

    assert [result.request for result in results] == requests
    assert shown_numbers(results[0].frames) == [0, 30, 60, 90, 120]
    assert isinstance(results[1].error, VideoDecodeError)
    assert isinstance(results[2].error, VideoNotFoundError)
    assert shown_numbers(results[3].frames) == [0, 60, 120, 180]
    assert shown_numbers(results[4].frames) == [25, 50]


def test_pool_matches_in_process_decoding(clips):
    paths = [clips[name] for name, *_ in CLIPS]
    with DecodePool(workers=2) as pool:
        pooled = list(load_many([VideoRequest(path) for path in paths], SETTINGS, pool=pool))
    for path, result in zip(paths, pooled):
        direct = decode_with("decord", path, SETTINGS)
        assert np.array_equal(result.frames.frames[:len(direct.frames)], direct.frames), path.name


def test_pool_reusable_after_early_stop(clips):
    requests = [VideoRequest(clips[name]) for name, *_ in CLIPS]
    with DecodePool(workers=2) as pool:
        for result in load_many(requests, SETTINGS, pool=pool):
            break  # leaves the other requests in flight
        again = list(load_many(requests[:2], SETTINGS, pool=pool))
    assert shown_numbers(result.frames) == [0, 30, 60, 90, 120]
    assert [item.request for item in again] == requests[:2]
    assert shown_numbers(again[1].frames) == [0, 25, 50, 75, 100, 125]


def test_scan_finds_missing_and_undecodable(tmp_path, clips):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(clips["h264_30.mp4"].read_bytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video")

    with DecodePool(workers=1) as pool:
        report = scan_videos(folder, ["good", "empty", "text", "gone", "good"], SETTINGS, pool=pool)
    assert list(report.found) == ["good", "empty", "text"]
    assert list(report.missing) == ["gone"]
    assert sorted(report.undecodable) == ["empty", "text"]
    assert "empty (0 bytes)" in report.undecodable["empty"]
    assert sorted(report.problems()) == ["empty", "gone", "text"]
    assert not report.ok
