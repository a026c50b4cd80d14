"""Build the student from a CLIP or student checkpoint named in the config, and load saved students."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.config import Config
from pipeline.models.checkpoints import load_parameters, read_state_dict, require_model
from pipeline.models.clip import CLIP_PRESETS, CLIPConfig, strip_non_parameters
from pipeline.models.student import StudentConfig, TeachCLIPStudent

logger = logging.getLogger(__name__)

# Parameters of the CLIP text and image towers that train even below freeze_layer_num, as in TeachCLIP.
ALWAYS_TRAINED_CLIP_PREFIXES = ("ln_final.", "text_projection", "logit_scale", "visual.ln_post.", "visual.proj")


def student_config_from_state_dict(state_dict: dict[str, torch.Tensor], precision: str = "fp32") -> StudentConfig:
    """Read the student's architecture off a student state dict (TeachCLIP's parameter names)."""
    temporal_layers = len({key.split(".")[2] for key in state_dict if key.startswith("transformerClip.resblocks.")})
    return StudentConfig(clip=CLIPConfig.from_state_dict(state_dict, prefix="clip."),
                         temporal_layers=temporal_layers, precision=precision)


def load_student(path: str | Path, precision: str = "fp32") -> TeachCLIPStudent:
    """Load a student saved by distill (or released by TeachCLIP), sized from the checkpoint itself."""
    state_dict = read_state_dict(path, "student")
    require_model(state_dict, "student", path)
    model = TeachCLIPStudent(student_config_from_state_dict(state_dict, precision))
    load_parameters(model, state_dict, f"student checkpoint {path}")
    return model


def check_clip_name(config: Config, clip_config: CLIPConfig, path: Path) -> None:
    preset = CLIP_PRESETS.get(config.model.pretrained_clip_name)
    if preset is not None and preset.vision_patch_size != clip_config.vision_patch_size:
        raise ValueError(
            f"{path} has patch size {clip_config.vision_patch_size} but model.pretrained_clip_name is "
            f"'{config.model.pretrained_clip_name}'; point model.clip_checkpoint at the matching OpenAI archive"
        )


def build_student(config: Config) -> TeachCLIPStudent:
    """Start the student from model.init_model if set, else from the CLIP archive in model.clip_checkpoint."""
    precision = config.model.precision
    if config.model.init_model:
        return load_student(config.model.init_model, precision)

    if not config.model.clip_checkpoint:
        raise ValueError(
            f"{config.source}: set model.clip_checkpoint to a local copy of OpenAI's "
            f"{config.model.pretrained_clip_name.replace('/', '-')}.pt (or model.init_model to a student checkpoint); "
            "nothing is downloaded"
        )
    path = Path(config.model.clip_checkpoint).expanduser()
    clip_state = strip_non_parameters(read_state_dict(path, "clip"))
    require_model(clip_state, "clip", path)
    clip_config = CLIPConfig.from_state_dict(clip_state)
    check_clip_name(config, clip_config, path)

    model = TeachCLIPStudent(StudentConfig(clip=clip_config, temporal_layers=config.model.cross_num_hidden_layers,
                                           precision=precision))
    model.init_from_clip(clip_state)
    return model


def freeze_clip_layers(model: TeachCLIPStudent, freeze_layer_num: int) -> list[str]:
    """Freeze CLIP's embeddings and its blocks below `freeze_layer_num`, as TeachCLIP does; -1 freezes nothing.

    With the default 0, CLIP's token, position and patch embeddings and ln_pre stay frozen while every block trains.
    """
    if freeze_layer_num < 0:
        return []
    frozen = []
    for name, parameter in model.clip.named_parameters():
        if name.startswith(ALWAYS_TRAINED_CLIP_PREFIXES):
            continue
        if ".resblocks." in name and int(name.split(".resblocks.")[1].split(".")[0]) >= freeze_layer_num:
            continue
        parameter.requires_grad_(False)
        frozen.append(f"clip.{name}")
    logger.info("froze %d CLIP parameters below layer %d", len(frozen), freeze_layer_num)
    return frozen
