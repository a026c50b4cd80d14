"""Config schema: sections, key checks, value checks, TeachCLIP's teacher keys and overrides."""

import pytest

from pipeline.config import ConfigError, build_config, load_config


def test_defaults_follow_teachclip():
    config = build_config({})
    assert config.train.lr == 1e-4
    assert config.train.coef_lr == 1e-3
    assert config.train.batch_size == 120
    assert config.datasets.max_frames == 12
    assert config.distillation.distill_method == "pear"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "train.learning_rate" in str(error.value)
    assert str(path) in str(error.value)


def test_unknown_section_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'datasets'"):
        build_config({"dataset": {"max_words": 32}})


def test_invalid_choice_rejected():
    with pytest.raises(ConfigError, match="distill_method"):
        build_config({"distillation": {"distill_method": "kl"}})


def test_non_numeric_value_rejected():
    with pytest.raises(ConfigError, match="train.epochs: invalid value 'ten'"):
        build_config({"train": {"epochs": "ten"}})


def test_teachclip_teacher_keys_become_list():
    config = build_config({"distillation": {
        "teacher_num": 2,
        "teacher1_name": "XCLIP", "init_teacher1_model": "a.bin",
        "teacher2_name": "TS2Net", "init_teacher2_model": "b.bin",
    }})
    assert [(spec.name, spec.checkpoint) for spec in config.distillation.teachers] == [
        ("XCLIP", "a.bin"), ("TS2Net", "b.bin")]


def test_teacher_num_must_match_names():
    with pytest.raises(ConfigError, match="teacher_num is 2"):
        build_config({"distillation": {"teacher_num": 2, "teacher1_name": "XCLIP", "init_teacher1_model": "a.bin"}})


def test_override_replaces_value():
    config = build_config({"train": {"lr": 1e-4}}, overrides=("train.lr=5e-5", "datasets.max_frames=8"))
    assert config.train.lr == 5e-5
    assert config.datasets.max_frames == 8


def test_malformed_override_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        build_config({}, overrides=("lr=5",))


def test_missing_config_file_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_bad_override_names_the_set():
    with pytest.raises(ConfigError) as error:
        build_config({}, overrides=("train.epoch=3",))
    assert "--set train.epoch=3" in str(error.value)
    assert "did you mean 'epochs'" in str(error.value)


def test_split_teacher_keys_in_overrides():
    config = build_config({}, overrides=("distillation.teacher1_name=XCLIP", "distillation.init_teacher1_model=a.bin"))
    assert [(spec.name, spec.checkpoint) for spec in config.distillation.teachers] == [("XCLIP", "a.bin")]
