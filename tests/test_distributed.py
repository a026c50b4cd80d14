"""Distill across processes (gloo on CPU) and resume after SIGKILL, against uninterrupted single runs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from pipeline.config import build_config, save_config
from stages.distill import run_distill
from stages.precompute import run_precompute
from tiny_run import tiny_config

# Two processes sum gradients in another order than one process. After a few BertAdam steps the
# weights agree to about 1e-6, so 1e-4 leaves room without hiding a wrong gradient scale.
WEIGHT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
KILL_AFTER_STEPS = 3
PROCESS_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cached_config(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distributed")
    config = tiny_config(directory, overrides=("train.batch_size=8", "cache.store_frames=true"))
    run_precompute(config)
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_environment() -> dict:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(os.getcwd()), environment.get("PYTHONPATH", "")]))
    environment["OMP_NUM_THREADS"] = "1"
    return environment


def torchrun(stage: str, config_path, *options: str) -> subprocess.CompletedProcess:
    """Run a stage in two gloo processes on this machine, as a user would with torchrun."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "pipeline.cli", stage, *options, "--config", str(config_path)]
    return subprocess.run(command, env=child_environment(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)


def read_log(run_dir) -> list[dict]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_weights(run_dir) -> dict:
    return torch.load(run_dir / "final" / "pytorch_model.bin", weights_only=True)


def max_weight_difference(first: dict, second: dict) -> float:
    assert sorted(first) == sorted(second)
    return max((first[name].float() - second[name].float()).abs().max().item() for name in first)


def write_run_config(config, path, run_dir, *extra):
    run_config = build_config(config.to_dict(), overrides=(f"train.output_dir={run_dir}", *extra))
    save_config(run_config, path)
    return run_config


def test_two_processes_match_one(cached_config, tmp_path):
    single_dir, double_dir = tmp_path / "single", tmp_path / "double"
    run_distill(build_config(cached_config.to_dict(), overrides=(f"train.output_dir={single_dir}",)))
    write_run_config(cached_config, tmp_path / "double.yaml", double_dir)

    completed = torchrun("distill", tmp_path / "double.yaml")
    assert completed.returncode == 0, completed.stderr[-3000:]

    single_log, double_log = read_log(single_dir), read_log(double_dir)
    assert len(single_log) == len(double_log) == 6
    for one, two in zip(single_log, double_log):
        assert one["loss"] == pytest.approx(two["loss"], abs=LOSS_TOLERANCE), one["step"]
    assert max_weight_difference(load_weights(single_dir), load_weights(double_dir)) < WEIGHT_TOLERANCE


def test_resume_after_sigkill_matches(cached_config, tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    overrides = ("train.epochs=1", "train.save_every_steps=1")
    write_run_config(cached_config, tmp_path / "straight.yaml", straight_dir, *overrides)
    write_run_config(cached_config, tmp_path / "killed.yaml", killed_dir, *overrides)

    # Both runs are child processes with the same thread count, so their arithmetic is identical.
    straight = subprocess.run([sys.executable, "-m", "pipeline.cli", "distill", "--config", str(tmp_path / "straight.yaml")],
                              env=child_environment(), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert straight.returncode == 0, straight.stderr[-3000:]

    command = [sys.executable, "-m", "pipeline.cli", "distill", "--config", str(tmp_path / "killed.yaml")]
    process = subprocess.Popen(command, env=child_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while len(read_log(killed_dir)) < KILL_AFTER_STEPS and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "distill finished before it could be killed; give it more steps"
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps_before_kill = len(read_log(killed_dir))
    assert steps_before_kill < 6

    resumed = subprocess.run(command + ["--resume"], env=child_environment(), capture_output=True, text=True,
                             timeout=PROCESS_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert max_weight_difference(load_weights(straight_dir), load_weights(killed_dir)) == 0.0
    logged_steps = sorted({record["step"] for record in read_log(killed_dir)})
    assert logged_steps == list(range(6))


def test_two_process_precompute_matches_one(tmp_path):
    from cache import TeacherCache

    single = tiny_config(tmp_path / "single", teachers=("xclip", "xpool"),
                         overrides=("train.batch_size=8", "cache.store_frames=true"))
    run_precompute(single)

    double_dir = tmp_path / "double"
    double = build_config(single.to_dict(), overrides=(f"cache.path={double_dir / 'teacher_cache.zarr'}",
                                                       f"train.output_dir={double_dir / 'run'}"))
    save_config(double, tmp_path / "double.yaml")
    completed = torchrun("precompute", tmp_path / "double.yaml")
    assert completed.returncode == 0, completed.stderr[-3000:]

    with TeacherCache.open(single.cache.path) as one, TeacherCache.open(double.cache.path) as two:
        assert two.is_complete()
        assert (one.frame_mask == two.frame_mask).all()
        for step in range(len(one.schedule)):
            first, second = one.read_step(step), two.read_step(step)
            for name in ("xclip", "xpool"):
                assert (first[name][0] == second[name][0]).all(), (step, name)
                assert (first[name][1] == second[name][1]).all(), (step, name)
        for video in range(len(one.video_ids)):
            assert (one.read_video_frames(video) == two.read_video_frames(video)).all(), video


def test_two_process_online_matches_one(cached_config, tmp_path):
    single_dir, double_dir = tmp_path / "single", tmp_path / "double"
    run_distill(build_config(cached_config.to_dict(), overrides=(f"train.output_dir={single_dir}",)), online=True)
    write_run_config(cached_config, tmp_path / "double.yaml", double_dir)

    completed = torchrun("distill", tmp_path / "double.yaml", "--online")
    assert completed.returncode == 0, completed.stderr[-3000:]

    single_log, double_log = read_log(single_dir), read_log(double_dir)
    assert len(single_log) == len(double_log) == 6
    for one, two in zip(single_log, double_log):
        for term in ("loss", "coarse", "fine"):
            assert one[term] == pytest.approx(two[term], abs=LOSS_TOLERANCE), (one["step"], term)
