"""Run configuration: YAML files in TeachCLIP's sections, checked keys, command-line overrides.

Sections and key names follow TeachCLIP's own YAML files (model, datasets, distillation, train),
so those files load as they are. `cache` and `evaluate` are this tool's additions. Relative paths
are taken relative to the working directory, as in TeachCLIP.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# TeachCLIP names its teachers teacher1_name/init_teacher1_model ...; it supports up to three.
TEACHCLIP_TEACHER_KEY = re.compile(r"^(teacher|init_teacher)(\d+)_(name|model)$")


class ConfigError(ValueError):
    """An invalid config key or value; the message names the key, the file and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    pretrained_clip_name: str = "ViT-B/32"  # architecture name, for the record and the size check
    clip_checkpoint: str = ""  # local path of OpenAI's ViT-B-32.pt / ViT-B-16.pt; nothing is downloaded
    init_model: str = ""  # student checkpoint to start from instead of CLIP
    freeze_layer_num: int = 0  # CLIP embeddings and blocks below this index stay frozen; -1 trains all
    linear_patch: str = "2d"
    sim_header: str = "seqTransf"
    cross_model: str = "cross-base"  # accepted for TeachCLIP files; the loose seqTransf student has no cross model
    loose_type: bool = True
    cross_num_hidden_layers: int = 4  # temporal transformer depth
    precision: str = "fp32"  # "fp32" or "reference_fp16" (CLIP weights in float16 as the reference trained)


@dataclass(frozen=True)
class DatasetConfig:
    data_type: str = "msrvtt"
    data_path: str = ""
    train_csv: str = ""
    val_csv: str = ""
    test_csv: str = ""
    video_path: str = ""
    num_thread_reader: int = 2  # DataLoader worker processes for decoding
    max_words: int = 32
    max_frames: int = 12
    feature_framerate: int = 1
    expand_msrvtt_sentences: bool = True
    train_frame_order: int = 0
    eval_frame_order: int = 0
    slice_framepos: int = 2
    on_missing_video: str = "stop"  # "stop" or "skip" (skipped ids are written to a report)
    decode_timeout_s: float = 120.0  # per-video decoding time limit before the ffmpeg fallback


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    checkpoint: str


@dataclass(frozen=True)
class DistillationConfig:
    beta: float = 1.0
    distill_method: str = "pear"  # coarse loss: "ce", "pear" or "l1"
    fine_method: str = "ce"  # fine loss: "ce", "pear" or "l1"
    teachers: tuple[TeacherSpec, ...] = ()
    teacher_num: int = 0  # TeachCLIP's count of teacherN_* keys; checked against them


@dataclass(frozen=True)
class TrainConfig:
    overwrite: bool = False
    seed: int = 42
    lr: float = 1e-4
    coef_lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 120
    batch_size_val: int = 40
    lr_decay: float = 0.9  # accepted for TeachCLIP files; its warmup-cosine schedule does not read it
    n_display: int = 10  # log every n steps
    warmup_proportion: float = 0.1
    gradient_accumulation_steps: int = 1
    output_dir: str = "runs/teachclip"
    optimizer: str = "bertadam"  # "bertadam" (TeachCLIP's) or "adamw"
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # Accelerate's "no", "fp16" or "bf16"
    save_every_steps: int = 0  # Accelerate state every N steps for resume (0: each epoch only)
    log_with: str = ""  # Accelerate tracker for step metrics, e.g. "tensorboard"; empty keeps only the JSONL log


@dataclass(frozen=True)
class CacheConfig:
    path: str = ""  # zarr directory (or fsspec URL) or .h5 file; default: <output_dir>/teacher_cache.zarr
    backend: str = "zarr"  # "zarr" or "hdf5"
    store_frames: bool = False  # also store decoded uint8 frames so distill skips decoding
    target_dtype: str = "float16"  # dtype of cached logits and frame targets
    encode_batch_size: int = 16  # videos or texts per teacher encoding batch


@dataclass(frozen=True)
class EvaluateConfig:
    chunk_size: int = 0  # queries scored per block; 0 sizes blocks to about 256 MiB of scores
    dual_softmax: bool = False  # also report dual-softmax re-ranked metrics, beside the plain ones
    output_dir: str = ""  # default: <train.output_dir>/eval


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: DatasetConfig = field(default_factory=DatasetConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str = "<defaults>"  # file the config was read from, for messages

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("source")
        values["distillation"]["teachers"] = [dict(spec) for spec in values["distillation"]["teachers"]]
        return values


SECTIONS = {item.name: item.type for item in fields(Config) if item.name != "source"}
SECTION_CLASSES = {
    "model": ModelConfig, "datasets": DatasetConfig, "distillation": DistillationConfig,
    "train": TrainConfig, "cache": CacheConfig, "evaluate": EvaluateConfig,
}
CHOICES = {
    ("model", "precision"): ("fp32", "reference_fp16"),
    ("model", "sim_header"): ("seqTransf",),
    ("model", "linear_patch"): ("2d",),
    ("datasets", "on_missing_video"): ("stop", "skip"),
    ("datasets", "slice_framepos"): (0, 1, 2),
    ("datasets", "train_frame_order"): (0, 1, 2),
    ("datasets", "eval_frame_order"): (0, 1, 2),
    ("distillation", "distill_method"): ("ce", "pear", "l1"),
    ("distillation", "fine_method"): ("ce", "pear", "l1"),
    ("train", "optimizer"): ("bertadam", "adamw"),
    ("train", "mixed_precision"): ("no", "fp16", "bf16"),
    ("cache", "backend"): ("zarr", "hdf5"),
    ("cache", "target_dtype"): ("float16", "float32"),
}
POSITIVE = {
    ("datasets", "max_words"), ("datasets", "max_frames"), ("datasets", "feature_framerate"),
    ("train", "epochs"), ("train", "batch_size"), ("train", "batch_size_val"), ("train", "lr"),
    ("train", "gradient_accumulation_steps"), ("cache", "encode_batch_size"),
    ("distillation", "beta"), ("datasets", "decode_timeout_s"),
}


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def coerce(value: Any, target: Any, where: str) -> Any:
    """Convert a YAML value to the field's type, or raise ConfigError naming the key."""
    type_name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError("expected true or false")
        if type_name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            return int(value)
        if type_name == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if type_name == "str":
            return "" if value is None else str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: invalid value {value!r} ({error})") from error
    return value


def teachers_from_teachclip_keys(values: dict[str, Any], where: str) -> list[dict[str, str]]:
    """Collect TeachCLIP's teacherN_name / init_teacherN_model keys into a teacher list."""
    by_index: dict[int, dict[str, str]] = {}
    for key in list(values):
        match = TEACHCLIP_TEACHER_KEY.match(key)
        if not match:
            continue
        kind, index, _ = match.groups()
        entry = by_index.setdefault(int(index), {})
        entry["name" if kind == "teacher" else "checkpoint"] = values.pop(key)

    teachers = []
    for index in sorted(by_index):
        entry = by_index[index]
        if not entry.get("name"):
            continue
        if not entry.get("checkpoint"):
            raise ConfigError(f"{where}: teacher{index}_name is set but init_teacher{index}_model is missing")
        teachers.append(entry)
    return teachers


def build_section(name: str, values: dict[str, Any], where: str) -> Any:
    cls = SECTION_CLASSES[name]
    known = {item.name: item for item in fields(cls)}
    values = dict(values or {})

    if name == "distillation":
        listed = values.pop("teachers", None) or []
        if not isinstance(listed, list):
            raise ConfigError(f"{where}: distillation.teachers must be a list of {{name, checkpoint}} entries")
        listed = list(listed) + teachers_from_teachclip_keys(values, where)
        teacher_specs = []
        for entry in listed:
            if not isinstance(entry, dict) or set(entry) != {"name", "checkpoint"}:
                raise ConfigError(f"{where}: each teacher needs exactly 'name' and 'checkpoint', got {entry!r}")
            teacher_specs.append(TeacherSpec(name=str(entry["name"]), checkpoint=str(entry["checkpoint"])))
        values["teachers"] = tuple(teacher_specs)

    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key '{name}.{key}'{suggest(key, list(known))}; "
                f"known keys of '{name}': {', '.join(sorted(known))}"
            )
        field_type = known[key].type
        kwargs[key] = value if key == "teachers" else coerce(value, field_type, f"{where}: {name}.{key}")
        allowed = CHOICES.get((name, key))
        if allowed is not None and kwargs[key] not in allowed:
            raise ConfigError(f"{where}: {name}.{key} = {kwargs[key]!r} is not one of {allowed}")
        if (name, key) in POSITIVE and kwargs[key] <= 0:
            raise ConfigError(f"{where}: {name}.{key} must be positive, got {kwargs[key]!r}")

    section = cls(**kwargs)
    if name == "distillation" and section.teacher_num and section.teacher_num != len(section.teachers):
        raise ConfigError(
            f"{where}: distillation.teacher_num is {section.teacher_num} but {len(section.teachers)} teachers are named; "
            "make them agree or drop teacher_num"
        )
    return section


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split 'section.key=value' into its parts; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}' is not of the form section.key=value, e.g. train.lr=5e-5")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    return section, key, yaml.safe_load(raw)


def check_override(section: str, key: str, value: Any, text: str) -> None:
    """Reject an override naming an unknown section or key, or carrying an invalid value, naming the --set."""
    if section not in SECTION_CLASSES:
        raise ConfigError(f"--set {text}: unknown section '{section}'{suggest(section, list(SECTION_CLASSES))}; "
                          f"known sections: {', '.join(SECTION_CLASSES)}")
    if TEACHCLIP_TEACHER_KEY.match(key):
        return  # teacherN_name and init_teacherN_model are checked together once all overrides are in
    try:
        build_section(section, {key: value}, f"--set {text}")
    except ConfigError as error:
        raise ConfigError(str(error)) from None


def build_config(data: dict[str, Any], source: str = "<dict>", overrides: tuple[str, ...] = ()) -> Config:
    """Check and build a Config from nested dicts, applying `section.key=value` overrides on top."""
    data = {section: dict(values or {}) for section, values in (data or {}).items()}
    for override in overrides:
        section, key, value = parse_override(override)
        check_override(section, key, value, override)
        data.setdefault(section, {})[key] = value

    sections = {}
    for name, values in data.items():
        if name not in SECTION_CLASSES:
            raise ConfigError(
                f"{source}: unknown section '{name}'{suggest(name, list(SECTION_CLASSES))}; "
                f"known sections: {', '.join(SECTION_CLASSES)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping of keys to values")
        sections[name] = build_section(name, values, source)
    return Config(**sections, source=source)


def load_config(path: str | Path, overrides: tuple[str, ...] = ()) -> Config:
    """Read a YAML config file; unknown sections or keys raise ConfigError naming the key and the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass a YAML file such as configs/msrvtt-1k.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of sections (model, datasets, distillation, train, ...)")
    config = build_config(data, source=str(path), overrides=overrides)
    logger.info("loaded config %s with %d overrides", path, len(overrides))
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
