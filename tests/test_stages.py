"""Precompute, distill and evaluate run end to end on the bundled clips with tiny random models."""

import json

import numpy as np
import pytest
import torch

from cache import TeacherCache
from cache.fingerprint import FingerprintMismatchError
from pipeline.config import build_config
from pipeline.data.frames import FrameSettings
from pipeline.data.videos import find_video, load_video_frames
from pipeline.models.preprocess import normalize_frames
from pipeline.models.teachers import load_teacher
from stages.distill import run_distill
from stages.evaluate import run_evaluate
from stages.precompute import run_precompute
from tiny_run import TINY_MAX_FRAMES, tiny_config


def read_train_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def precomputed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stages")
    config = tiny_config(directory, overrides=("train.batch_size=8",))
    result = run_precompute(config)
    return config, result


def test_precompute_writes_every_step(precomputed):
    config, result = precomputed
    with TeacherCache.open(result.cache_path) as cache:
        assert cache.is_complete()
        assert cache.schedule.shape == (6, 8)  # 48 captions, batch 8, one epoch
        logits, frame_targets = cache.read_step(5)["xclip"]
    assert logits.shape == (8, 8)
    assert frame_targets.shape == (8, TINY_MAX_FRAMES)
    assert np.allclose(frame_targets.sum(axis=1), 1.0, atol=1e-5)


def test_cached_targets_equal_online_teacher(precomputed):
    config, result = precomputed
    teacher = load_teacher("xclip", config.distillation.teachers[0].checkpoint).eval()
    settings = FrameSettings(max_frames=TINY_MAX_FRAMES)

    with TeacherCache.open(result.cache_path) as cache:
        step = 3
        samples = np.asarray(cache.schedule)[step]
        text_rows = np.asarray(cache.text_index)[samples]
        video_rows = np.asarray(cache.video_index)[samples]
        input_ids = torch.from_numpy(np.asarray(cache.tokens)[text_rows]).long()
        attention_mask = torch.from_numpy(np.asarray(cache.mask)[text_rows]).long()
        video_ids = [str(cache.video_ids[row]) for row in video_rows]
        cached_logits, cached_frames = cache.read_step(step)["xclip"]

    decoded = [load_video_frames(find_video(config.datasets.video_path, video_id), settings) for video_id in video_ids]
    frames = normalize_frames(torch.from_numpy(np.stack([video.frames for video in decoded])))
    frame_mask = torch.from_numpy(np.stack([video.frame_mask for video in decoded])).long()
    with torch.no_grad():
        logits, frame_targets = teacher(input_ids, attention_mask, frames, frame_mask)

    assert np.abs(cached_logits - logits.numpy()).max() < 1e-5
    assert np.abs(cached_frames - frame_targets.numpy()).max() < 1e-6


def test_rerun_writes_nothing(precomputed):
    config, _ = precomputed
    again = run_precompute(config)
    assert again.steps_written == 0


def test_cached_and_online_losses_match(precomputed, tmp_path):
    config, _ = precomputed
    cached_config = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'cached'}",))
    online_config = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'online'}",))

    run_distill(cached_config)
    run_distill(online_config, online=True)

    cached = read_train_log(tmp_path / "cached")
    online = read_train_log(tmp_path / "online")
    assert len(cached) == len(online) == 6
    for cached_step, online_step in zip(cached, online):
        for term in ("loss", "ground_truth", "coarse", "fine"):
            assert cached_step[term] == pytest.approx(online_step[term], abs=1e-5), (cached_step["step"], term)


def test_distill_leaves_checkpoints_and_metrics(precomputed, tmp_path):
    config, _ = precomputed
    run_config = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'run'}",))
    result = run_distill(run_config)

    assert result.best_checkpoint.is_file()
    assert (tmp_path / "run" / "epoch_0" / "pytorch_model.bin").is_file()
    assert (tmp_path / "run" / "epoch_0" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "val_log.jsonl").is_file()

    metrics = run_evaluate(run_config, result.best_checkpoint, output_dir=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["text_to_video"]["count"] == 8
    assert written["video_to_text"]["count"] == 8
    assert written["tie_rule"] == "ties_count_against_positive"
    assert metrics["text_to_video"]["R1"] == written["text_to_video"]["R1"]
    assert (tmp_path / "eval" / "ranks.csv").read_text().startswith("query_id,video_id,rank")


def test_fingerprint_mismatch_names_field(precomputed, tmp_path):
    config, _ = precomputed
    other_seed = build_config(config.to_dict(), overrides=("train.seed=1234", f"train.output_dir={tmp_path}"))
    with pytest.raises(FingerprintMismatchError) as error:
        run_distill(other_seed)
    assert "seed" in str(error.value)
    assert "1234" in str(error.value)


def test_planted_nan_stops_training(precomputed, tmp_path):
    import shutil

    import zarr

    from pipeline.losses import NonFiniteLossError

    config, result = precomputed
    copy = tmp_path / "cache.zarr"
    shutil.copytree(result.cache_path, copy)
    logits = zarr.open_group(str(copy), mode="r+")["teachers/xclip/logits"]
    logits[2, 1, 1] = float("nan")
    with TeacherCache.open(copy) as cache:
        planted_samples = np.asarray(cache.schedule)[2].tolist()

    run_config = build_config(config.to_dict(), overrides=(f"cache.path={copy}", f"train.output_dir={tmp_path / 'run'}"))
    with pytest.raises(NonFiniteLossError) as error:
        run_distill(run_config)
    message = str(error.value)
    assert "step 2" in message
    assert "xclip" in message
    assert str(planted_samples[:3])[1:-1] in message


def test_training_curves_png_written(precomputed, tmp_path):
    config, _ = precomputed
    run_config = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'run'}",))
    run_distill(run_config)
    png = tmp_path / "run" / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bf16_mixed_precision_trains(precomputed, tmp_path):
    config, _ = precomputed
    full = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'fp32'}", "train.epochs=1"))
    mixed = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'bf16'}",
                                                      "train.mixed_precision=bf16"))
    run_distill(full)
    run_distill(mixed)

    full_log = read_train_log(tmp_path / "fp32")
    mixed_log = read_train_log(tmp_path / "bf16")
    assert len(mixed_log) == 6
    assert all(np.isfinite(record["loss"]) for record in mixed_log)
    # bfloat16 keeps about 3 significant digits, so the first loss agrees to about 1e-2.
    assert mixed_log[0]["loss"] == pytest.approx(full_log[0]["loss"], abs=2e-2)


def test_hdf5_cache_equals_zarr_and_trains(precomputed, tmp_path):
    config, result = precomputed
    hdf5_config = build_config(config.to_dict(), overrides=(
        "cache.backend=hdf5", f"cache.path={tmp_path / 'teacher_cache.h5'}", f"train.output_dir={tmp_path / 'run'}"))
    run_precompute(hdf5_config)

    with TeacherCache.open(result.cache_path) as zarr_cache, TeacherCache.open(tmp_path / "teacher_cache.h5") as h5:
        assert h5.backend == "hdf5"
        assert (np.asarray(zarr_cache.schedule) == np.asarray(h5.schedule)).all()
        for step in range(len(zarr_cache.schedule)):
            zarr_logits, zarr_frames = zarr_cache.read_step(step)["xclip"]
            h5_logits, h5_frames = h5.read_step(step)["xclip"]
            assert (zarr_logits == h5_logits).all()
            assert (zarr_frames == h5_frames).all()

    trained = run_distill(hdf5_config)
    assert trained.best_checkpoint.is_file()


def test_rerun_into_run_directory_refused(precomputed, tmp_path):
    config, _ = precomputed
    run_config = build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path}", "train.overwrite=false"))
    (tmp_path / "train_log.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(FileExistsError) as error:
        run_distill(run_config)
    assert "--resume" in str(error.value)
    assert "train.overwrite=true" in str(error.value)


def test_distill_without_cache_says_precompute(precomputed, tmp_path):
    from cache import CacheNotFoundError

    config, _ = precomputed
    run_config = build_config(config.to_dict(), overrides=(
        f"cache.path={tmp_path / 'absent.zarr'}", f"train.output_dir={tmp_path / 'run'}"))
    with pytest.raises(CacheNotFoundError, match="teachclip-pipeline precompute"):
        run_distill(run_config)


def test_missing_video_folder_named(precomputed, tmp_path):
    from stages.common import MissingVideosError

    config, _ = precomputed
    run_config = build_config(config.to_dict(), overrides=(
        f"datasets.video_path={tmp_path / 'no-videos'}", f"cache.path={tmp_path / 'cache.zarr'}"))
    with pytest.raises(MissingVideosError, match="no-videos .datasets.video_path. not found"):
        run_precompute(run_config)


def test_cli_fingerprint_mismatch_without_traceback(precomputed, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.config import save_config

    config, _ = precomputed
    path = tmp_path / "config.yaml"
    save_config(build_config(config.to_dict(), overrides=(f"train.output_dir={tmp_path / 'run'}",)), path)
    result = CliRunner().invoke(main, ["distill", "--config", str(path), "--set", "train.seed=99"])
    assert result.exit_code == 1
    assert "seed: expected 99, stored 0" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("teachers", [("xclip", "ts2net"), ("xpool",)])
def test_teacher_sets_precompute_and_train(teachers, tmp_path):
    config = tiny_config(tmp_path, teachers=teachers, overrides=("train.batch_size=8",))
    result = run_precompute(config)
    with TeacherCache.open(result.cache_path) as cache:
        assert sorted(cache.teacher_names) == sorted(teachers)
        targets = cache.read_step(0)
    for name in teachers:
        logits, frame_targets = targets[name]
        assert logits.shape == (8, 8)
        assert np.allclose(frame_targets.sum(axis=1), 1.0, atol=1e-5)

    trained = run_distill(config)
    log = read_train_log(tmp_path / "run")
    assert trained.best_checkpoint.is_file()
    assert len(log) == 6
    assert all(record["coarse"] > 0 for record in log)


def test_gradient_accumulation_rejected(precomputed, tmp_path):
    config, _ = precomputed
    run_config = build_config(config.to_dict(), overrides=(
        "train.gradient_accumulation_steps=2", f"train.output_dir={tmp_path}"))
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be 1"):
        run_distill(run_config)
