"""Samples and the replayable schedule of global batches."""

import numpy as np
import pytest

from pipeline.data.readers import Caption, SplitAnnotations
from pipeline.data.samples import build_samples, build_schedule


def make_annotations(videos: int, captions_per_video: int) -> SplitAnnotations:
    video_ids = tuple(f"video{index}" for index in range(videos))
    captions = tuple(
        Caption(text_id=f"{video_id}#{caption}", video_id=video_id, text=f"caption {caption} of {video_id}")
        for video_id in video_ids for caption in range(captions_per_video)
    )
    return SplitAnnotations("train", captions, video_ids)


def test_samples_pair_captions_with_videos():
    samples = build_samples(make_annotations(videos=3, captions_per_video=2))
    assert samples.num_samples == 6
    assert samples.video_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert samples.text_ids[3] == "video1#1"


def test_skipped_video_drops_its_captions():
    samples = build_samples(make_annotations(videos=3, captions_per_video=2), skip_videos=frozenset({"video1"}))
    assert samples.video_ids == ("video0", "video2")
    assert samples.video_index.tolist() == [0, 0, 1, 1]
    assert "video1#0" not in samples.text_ids


def test_schedule_drops_last_partial_batch():
    samples = build_samples(make_annotations(videos=5, captions_per_video=2))  # 10 samples
    schedule = build_schedule(samples, batch_size=4, epochs=3, seed=7)
    assert schedule.shape == (6, 4)  # 2 full batches per epoch
    for epoch in range(3):
        epoch_rows = schedule[2 * epoch: 2 * epoch + 2].reshape(-1)
        assert len(set(epoch_rows.tolist())) == 8


def test_schedule_is_seeded_and_epochs_differ():
    samples = build_samples(make_annotations(videos=8, captions_per_video=4))
    first = build_schedule(samples, batch_size=8, epochs=2, seed=3)
    again = build_schedule(samples, batch_size=8, epochs=2, seed=3)
    other_seed = build_schedule(samples, batch_size=8, epochs=2, seed=4)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    assert not np.array_equal(first[:4], first[4:])


def test_one_caption_per_video_without_expansion():
    samples = build_samples(make_annotations(videos=6, captions_per_video=3))
    schedule = build_schedule(samples, batch_size=3, epochs=1, seed=0, expand_sentences=False)
    videos = samples.video_index[schedule.reshape(-1)]
    assert schedule.shape == (2, 3)
    assert sorted(videos.tolist()) == list(range(6))


def test_batch_larger_than_epoch_rejected():
    samples = build_samples(make_annotations(videos=2, captions_per_video=1))
    with pytest.raises(ValueError, match="batch_size 4"):
        build_schedule(samples, batch_size=4, epochs=1, seed=0)
