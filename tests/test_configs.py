"""The benchmark configs, TeachCLIP's own YAML shape, unknown keys and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, build_config, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Published settings per benchmark: data_type, batch size, max_words, max_frames, teachers.
BENCHMARKS = {
    "msrvtt-1k": ("msrvtt", 120, 32, 12, ("XCLIP", "TS2Net")),
    "msrvtt-3k": ("msrvtt", 120, 32, 12, ("XCLIP", "TS2Net")),
    "msvd": ("msvd", 120, 32, 12, ("XCLIP", "TS2Net")),
    "vatex": ("vatex", 120, 32, 12, ("XCLIP", "TS2Net")),
    "activitynet": ("activity", 64, 64, 64, ("XCLIP",)),
    "didemo": ("didemo", 64, 64, 64, ("XCLIP",)),
}
DATASET_PATH_KEYS = ("data_path", "train_csv", "val_csv", "test_csv", "video_path")

# TeachCLIP's msrvtt-9k.yaml, key for key, with its teacherN_name / init_teacherN_model keys.
TEACHCLIP_YAML = """\
model:
  pretrained_clip_name: "ViT-B/32"
  freeze_layer_num: 0
  linear_patch: "2d" # linear projection of flattened patches. ["2d", "3d"]
  sim_header: "seqTransf"
  cross_model: "cross-base"
  loose_type: True
  cross_num_hidden_layers: 4

datasets:
  data_type: "msrvtt"
  train_csv: "data/datasets/msrvtt/Annotations/MSRVTT_train.9k.csv"
  val_csv: "data/datasets/msrvtt/Annotations/MSRVTT_JSFUSION_test.csv"
  test_csv: "data/datasets/msrvtt/Annotations/MSRVTT_JSFUSION_test.csv"
  data_path: "data/datasets/msrvtt/Annotations/MSRVTT_data.json"
  video_path: "data/datasets/msrvtt/VideoData"

  num_thread_reader: 8
  max_words: 32
  max_frames: 12
  feature_framerate: 1
  expand_msrvtt_sentences: True
  train_frame_order: 0
  eval_frame_order: 0
  slice_framepos: 2


distillation:
  beta: 1.0
  distill_method: "pear"
  fine_method: "ce"
  teacher_num: 2
  teacher1_name: "XCLIP"
  init_teacher1_model: "data/teacher_checkpoints/xclip/msrvtt-9k_xclip_model.bin"
  teacher2_name: "TS2Net"
  init_teacher2_model: "data/teacher_checkpoints/ts2net/msrvtt-9k_ts2net_model.bin"

train:
  overwrite: False
  seed: 42
  lr: 0.0001
  coef_lr: 0.001
  epochs: 10
  batch_size: 120
  batch_size_val: 40
  lr_decay: 0.9
  n_display: 10
  warmup_proportion: 0.1
  gradient_accumulation_steps: 1
  output_dir: "data/datasets/msrvtt/Models/msrvtt-9k_xclip+ts2net-as-teacher_vit32"
"""


def config_files() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def test_every_benchmark_has_config():
    names = {path.stem for path in config_files()}

    assert set(BENCHMARKS) <= names


@pytest.mark.parametrize("path", config_files(), ids=lambda path: path.name)
def test_config_file_loads(path):
    config = load_config(path)

    assert config.source == str(path)
    assert config.model.pretrained_clip_name == "ViT-B/32"


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_published_settings(name):
    data_type, batch_size, max_words, max_frames, teachers = BENCHMARKS[name]
    config = load_config(CONFIG_DIR / f"{name}.yaml")

    assert config.datasets.data_type == data_type
    assert config.train.batch_size == batch_size
    assert config.datasets.max_words == max_words
    assert config.datasets.max_frames == max_frames
    assert tuple(teacher.name for teacher in config.distillation.teachers) == teachers
    assert config.train.lr == 1e-4
    assert config.train.coef_lr == 1e-3
    assert config.train.epochs == 10
    assert config.train.warmup_proportion == 0.1
    assert config.train.max_grad_norm == 1.0
    assert config.train.seed == 42
    assert config.distillation.distill_method == "pear"
    assert config.distillation.fine_method == "ce"
    assert config.datasets.slice_framepos == 2
    assert config.datasets.feature_framerate == 1


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_paths_relative_and_documented(name):
    path = CONFIG_DIR / f"{name}.yaml"
    config = load_config(path)
    header = "".join(line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.startswith("#"))
    paths = [getattr(config.datasets, key) for key in DATASET_PATH_KEYS if getattr(config.datasets, key)]
    paths += [config.model.clip_checkpoint] + [teacher.checkpoint for teacher in config.distillation.teachers]

    for value in paths:
        assert not Path(value).is_absolute(), value
        assert value.startswith("data/"), value
    for key in DATASET_PATH_KEYS:
        value = getattr(config.datasets, key)
        assert not value or value in header, f"{key} = {value} is not described in the header comment"
    assert "ViT-B-32.pt" in header
    assert config.model.clip_checkpoint.endswith("ViT-B-32.pt")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_outputs_separate(name):
    config = load_config(CONFIG_DIR / f"{name}.yaml")

    assert config.train.output_dir == f"runs/{name}"
    assert config.cache.path.startswith(f"runs/{name}/")


def test_teachclip_yaml_accepted(tmp_path):
    path = tmp_path / "msrvtt-9k.yaml"
    path.write_text(TEACHCLIP_YAML, encoding="utf-8")

    config = load_config(path)

    assert [(teacher.name, teacher.checkpoint) for teacher in config.distillation.teachers] == [
        ("XCLIP", "data/teacher_checkpoints/xclip/msrvtt-9k_xclip_model.bin"),
        ("TS2Net", "data/teacher_checkpoints/ts2net/msrvtt-9k_ts2net_model.bin"),
    ]
    assert config.distillation.teacher_num == 2
    assert config.datasets.train_csv == "data/datasets/msrvtt/Annotations/MSRVTT_train.9k.csv"
    assert config.datasets.expand_msrvtt_sentences is True
    assert config.train.lr_decay == 0.9
    assert config.model.loose_type is True


def test_teachclip_paragraph_yaml_accepted(tmp_path):
    text = TEACHCLIP_YAML.replace('data_type: "msrvtt"', 'data_type: "activity"')
    text = text.replace("teacher_num: 2", "teacher_num: 1")
    text = "\n".join(line for line in text.splitlines() if "teacher2" not in line)
    path = tmp_path / "activitynet.yaml"
    path.write_text(text, encoding="utf-8")

    config = load_config(path)

    assert config.datasets.data_type == "activity"
    assert [teacher.name for teacher in config.distillation.teachers] == ["XCLIP"]


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  learning_rate: 0.001\n", encoding="utf-8")

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert "train.learning_rate" in str(error.value)
    assert str(path) in str(error.value)


def test_unknown_key_in_benchmark_copy(tmp_path):
    text = (CONFIG_DIR / "msvd.yaml").read_text(encoding="utf-8").replace("  max_frames: 12", "  max_frame: 12")
    path = tmp_path / "msvd.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as error:
        load_config(path)

    assert "datasets.max_frame" in str(error.value)
    assert "max_frames" in str(error.value)
    assert str(path) in str(error.value)


def test_docs_example_config_loads(tmp_path):
    text = (CONFIG_DIR.parent / "docs" / "own-data.md").read_text(encoding="utf-8")
    start = text.index("```yaml") + len("```yaml\n")
    path = tmp_path / "mine.yaml"
    path.write_text(text[start:text.index("```", start)], encoding="utf-8")

    config = load_config(path, overrides=("train.batch_size=64",))

    assert config.datasets.data_type == "plain"
    assert config.datasets.data_path == "data/mine/captions.csv"
    assert config.train.batch_size == 64


def test_override_sets_learning_rate():
    config = build_config({"train": {"lr": 1e-4}}, overrides=("train.lr=5e-5",))

    assert config.train.lr == 5e-5


def test_override_on_benchmark_file():
    config = load_config(CONFIG_DIR / "msrvtt-1k.yaml", overrides=("train.lr=5e-5", "datasets.max_frames=8"))

    assert config.train.lr == 5e-5
    assert config.datasets.max_frames == 8
    assert config.train.batch_size == 120
