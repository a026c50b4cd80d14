"""Frame sampling rule, resizing, ordering and padding, and parity with the reference's frames."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decoders import decode_with
from pipeline.data.frames import (
    FrameSettings,
    frame_order_permutation,
    normalise_time_range,
    pad_and_order_frames,
    resize_and_center_crop,
    resized_size,
    sample_second_indices,
    select_frame_indices,
)
from pipeline.data.videos import load_video_frames

REPO = Path(__file__).resolve().parents[1]
PARITY_FRAMES = REPO / "tests" / "fixtures" / "parity" / "frames_mini_msrvtt.npz"
DEMO_VIDEOS = REPO / "pipeline" / "demo_data" / "videos"

# (frame_count, fps, feature_framerate, max_frames, slice_framepos, start, end, expected indices),
# each worked out by hand from the reference loop: fps_int = int(fps), seconds 0..ceil(count / fps_int)
# inclusive (or start..min(end, duration)), frame second * fps_int + offset, stop at frame_count.
INDEX_TABLE = [
    # 240 frames at 30 fps: 8 s, seconds 0..8, frame 240 does not exist.
    (240, 30.0, 1, 12, 2, None, None, [0, 30, 60, 90, 120, 150, 180, 210]),
    # 525 frames at 25 fps: 21 sampled (0..500); uniform picks int(k * 20 / 11) for k = 0..11.
    (525, 25.0, 1, 12, 2, None, None, [0, 25, 75, 125, 175, 225, 250, 300, 350, 400, 450, 500]),
    (525, 25.0, 1, 12, 0, None, None, [0, 25, 50, 75, 100, 125, 150, 175, 200, 225, 250, 275]),
    (525, 25.0, 1, 12, 1, None, None, [225, 250, 275, 300, 325, 350, 375, 400, 425, 450, 475, 500]),
    # 29.97 fps counts as 29: ceil(300 / 29) = 11 s, frames 0, 29, ..., 290.
    (300, 29.97, 1, 12, 2, None, None, [0, 29, 58, 87, 116, 145, 174, 203, 232, 261, 290]),
    (30, 29.97, 1, 12, 2, None, None, [0, 29]),
    (75, 15.0, 1, 12, 2, None, None, [0, 15, 30, 45, 60]),
    (300, 60.0, 1, 12, 2, None, None, [0, 60, 120, 180, 240]),
    # One frame: second 0 gives frame 0, second 1 (frame 30) does not exist.
    (1, 30.0, 1, 12, 2, None, None, [0]),
    # Two frames a second at 25 fps: interval 25 // 2 = 12, offsets 0 and 12.
    (60, 25.0, 2, 12, 2, None, None, [0, 12, 25, 37, 50]),
    # feature_framerate 0 takes every frame.
    (5, 2.0, 0, 12, 2, None, None, [0, 1, 2, 3, 4]),
    # Segments: seconds 3..6; an end past the 4 s duration stops at second 4 (frame 100 missing).
    (525, 25.0, 1, 12, 2, 3, 6, [75, 100, 125, 150]),
    (100, 25.0, 1, 12, 2, 2, 10, [50, 75]),
    # 20 sampled frames (0..475 at 25 fps, 19 s) cut to 4 uniformly: int(k * 19 / 3) = 0, 6, 12, 19.
    (480, 25.0, 1, 4, 2, None, None, [0, 150, 300, 475]),
]


@pytest.mark.parametrize("frame_count, fps, framerate, max_frames, slice_framepos, start, end, expected", INDEX_TABLE)
def test_frame_indices_hand_table(frame_count, fps, framerate, max_frames, slice_framepos, start, end, expected):
    settings = FrameSettings(feature_framerate=framerate, max_frames=max_frames, slice_framepos=slice_framepos)
    indices = select_frame_indices(frame_count, fps, settings, start_time=start, end_time=end)
    assert indices.tolist() == expected


def test_sampling_before_cut_keeps_all():
    sampled = sample_second_indices(525, 25.0, 1)
    assert sampled.tolist() == list(range(0, 525, 25))


def test_time_range_reference_rules():
    assert normalise_time_range(2.7, 5.9) == (2, 5)
    assert normalise_time_range(6.0, 2.0) == (2, 6)  # swapped
    assert normalise_time_range(2.7, 2.2) == (2, 3)  # empty widened to one second
    assert normalise_time_range(-3.0, 4.0) == (0, 4)  # negative clamped
    assert normalise_time_range(None, None) == (None, None)


def test_framerate_above_fps_rejected():
    with pytest.raises(ValueError, match="feature_framerate 30 is more than"):
        sample_second_indices(100, 25.0, 30)


def test_settings_reject_invalid_values():
    with pytest.raises(ValueError, match="slice_framepos"):
        FrameSettings(slice_framepos=3)
    with pytest.raises(ValueError, match="max_frames"):
        FrameSettings(max_frames=0)
    with pytest.raises(ValueError, match="frame_order"):
        FrameSettings(frame_order=5)


def test_resized_size_truncates_long_side():
    # 224 * 320 / 240 = 298.67 and 224 * 176 / 144 = 273.78, truncated as torchvision does.
    assert resized_size(320, 240, 224) == (298, 224)
    assert resized_size(240, 320, 224) == (224, 298)
    assert resized_size(176, 144, 224) == (273, 224)
    assert resized_size(224, 224, 224) == (224, 224)


@pytest.mark.parametrize("width, expected_left", [(299, 38), (297, 36), (300, 38)])
def test_center_crop_rounds_half_even(width, expected_left):
    # The shorter side is already 224, so only the crop moves pixels: (299 - 224) / 2 = 37.5
    # rounds to 38 and (297 - 224) / 2 = 36.5 to 36, as Python's round does.
    columns = np.arange(width, dtype=np.int64) % 256
    frame = np.broadcast_to(columns[None, :, None], (224, width, 3)).astype(np.uint8)
    cropped = resize_and_center_crop(frame, 224)
    assert cropped.shape == (224, 224, 3)
    assert cropped[0, 0, 0] == expected_left % 256
    assert np.array_equal(cropped[0, :, 0], columns[expected_left:expected_left + 224].astype(np.uint8))


def test_resize_matches_pil_bicubic():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    expected = Image.fromarray(frame).resize((298, 224), Image.BICUBIC).crop((37, 0, 261, 224))
    assert np.array_equal(resize_and_center_crop(frame, 224), np.asarray(expected))


def test_frame_order_reverse_and_shuffle():
    assert frame_order_permutation(4, 0).tolist() == [0, 1, 2, 3]
    assert frame_order_permutation(4, 1).tolist() == [3, 2, 1, 0]
    first = frame_order_permutation(10, 2, np.random.default_rng(7))
    second = frame_order_permutation(10, 2, np.random.default_rng(7))
    assert sorted(first.tolist()) == list(range(10))
    assert first.tolist() == second.tolist()


def test_shuffle_without_rng_rejected():
    with pytest.raises(ValueError, match="seeded generator"):
        frame_order_permutation(3, 2, None)


def test_padding_and_mask():
    settings = FrameSettings(max_frames=5, image_size=2, frame_order=1)
    frames = np.stack([np.full((2, 2, 3), value, dtype=np.uint8) for value in (10, 20, 30)])
    video = pad_and_order_frames(frames, settings, "decord")
    assert video.frames.shape == (5, 2, 2, 3)
    assert video.frame_mask.tolist() == [True, True, True, False, False]
    assert video.frames[:, 0, 0, 0].tolist() == [30, 20, 10, 0, 0]


def test_padding_rejects_no_frames():
    with pytest.raises(ValueError, match="at least one frame"):
        pad_and_order_frames(np.zeros((0, 2, 2, 3), np.uint8), FrameSettings(image_size=2), "decord")


@pytest.fixture(scope="module")
def parity():
    return np.load(PARITY_FRAMES)


def test_decord_matches_reference_frames(parity):
    settings = FrameSettings(feature_framerate=1, max_frames=12, slice_framepos=2)
    for position, video_id in enumerate(parity["video_ids"]):
        video = load_video_frames(DEMO_VIDEOS / f"{video_id}.mp4", settings, decoder="decord")
        assert video.decoder == "decord"
        assert np.array_equal(video.frame_mask, parity["frame_mask"][position].astype(bool)), video_id
        assert np.array_equal(video.frames, parity["frames_uint8"][position]), video_id


def test_ffmpeg_close_to_reference_frames(parity):
    # Same frame indices as decord; pixels may differ slightly with the ffmpeg build's colour conversion.
    settings = FrameSettings(feature_framerate=1, max_frames=12, slice_framepos=2)
    for position, video_id in enumerate(parity["video_ids"]):
        path = DEMO_VIDEOS / f"{video_id}.mp4"
        with_ffmpeg = decode_with("ffmpeg", path, settings)
        with_decord = decode_with("decord", path, settings)
        assert with_ffmpeg.frame_indices.tolist() == with_decord.frame_indices.tolist(), video_id

        count = len(with_ffmpeg.frames)
        assert parity["frame_mask"][position].sum() == count, video_id
        difference = np.abs(with_ffmpeg.frames.astype(np.int16) - parity["frames_uint8"][position][:count])
        assert difference.mean() < 1.0, video_id
