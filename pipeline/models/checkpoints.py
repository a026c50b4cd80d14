"""Read checkpoints from local files without running pickled code, and load them with a report.

Plain state dicts go through `torch.load(weights_only=True)`. OpenAI's `ViT-B-32.pt` and
`ViT-B-16.pt` are TorchScript archives; those go through `torch.jit.load`, which rebuilds
TorchScript modules and tensors but never unpickles arbitrary Python objects.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Source of each kind of checkpoint, quoted in "not found" errors.
CHECKPOINT_SOURCES = {
    "clip": "OpenAI's CLIP release (ViT-B-32.pt or ViT-B-16.pt; the download URLs are listed in openai/CLIP, clip/clip.py)",
    "student": "a run directory of `teachclip-pipeline distill` (pytorch_model.bin) or the TeachCLIP release",
    "xclip": "the X-CLIP release (xuguohai/X-CLIP) or TeachCLIP's teacher checkpoints",
    "ts2net": "the TS2-Net release (yuqi657/ts2_net) or TeachCLIP's teacher checkpoints",
    "xpool": "the X-Pool release (layer6ai-labs/xpool) or TeachCLIP's teacher checkpoints",
    "clip4clip": "the CLIP4Clip release (ArrowLuo/CLIP4Clip) or a model you trained with it",
}

# Keys whose presence identifies which model a state dict belongs to, checked in this order.
MODEL_SIGNATURES = (
    ("xpool", "pool_frames.cross_attn.q_proj.weight"),
    ("ts2net", "visual_token_selector.score_predictor.in_conv.0.weight"),
    ("ts2net", "visual_prompt_encoder.conv1.weight"),
    ("xclip", "global_mat_weight"),
    ("student", "frameLinear2.weight"),
    ("clip4clip", "clip.visual.conv1.weight"),
    ("clip", "visual.conv1.weight"),
)


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint path that does not exist; the message names where to get the file."""


class CheckpointMismatchError(ValueError):
    """A checkpoint of another model, or one whose parameters do not fit the model."""


@dataclass
class LoadReport:
    """Parameter names a load left untouched or could not place."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self, limit: int = 10) -> str:
        def listing(names: list[str]) -> str:
            shown = ", ".join(names[:limit])
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            return f"{shown}{more}" if names else "none"

        return f"missing: {listing(self.missing)}; unexpected: {listing(self.unexpected)}"


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def require_file(path: str | Path, kind: str) -> Path:
    """Return `path` as a Path, or raise CheckpointNotFoundError naming where `kind` comes from."""
    path = Path(path).expanduser()
    if not path.is_file():
        source = CHECKPOINT_SOURCES.get(kind, "the model's release")
        raise CheckpointNotFoundError(
            f"{kind} checkpoint not found: {path}. Get it from {source} and pass its local path; "
            "nothing is downloaded by this tool"
        )
    return path


def read_state_dict(path: str | Path, kind: str) -> dict[str, torch.Tensor]:
    """Read a state dict from a plain checkpoint, a `{"state_dict": ...}` wrapper or a TorchScript archive."""
    path = require_file(path, kind)

    if is_torchscript_archive(path):
        logger.info("reading TorchScript archive %s", path)
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for unreadable or unsafe files
            raise CheckpointMismatchError(
                f"could not read {kind} checkpoint {path} ({type(error).__name__}: {error}). Expected a state dict "
                "saved with torch.save "
                "(tensors only) or a TorchScript archive"
            ) from error

    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(key, str) for key in state_dict):
        raise CheckpointMismatchError(f"{kind} checkpoint {path} does not hold a state dict (a mapping of names to tensors)")

    logger.info("read %d entries from %s", len(state_dict), path)
    return dict(state_dict)


def identify_model(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the model family a state dict belongs to ("student", "xclip", ...), or "unknown"."""
    for model_name, signature_key in MODEL_SIGNATURES:
        if signature_key in state_dict:
            return model_name
    return "unknown"


def require_model(state_dict: dict[str, torch.Tensor], expected: str, path: str | Path) -> None:
    """Raise CheckpointMismatchError when `state_dict` looks like another model than `expected`."""
    found = identify_model(state_dict)
    if found != expected:
        raise CheckpointMismatchError(
            f"{path} looks like a checkpoint of model '{found}', not of model '{expected}'; "
            f"pass a {expected} checkpoint (from {CHECKPOINT_SOURCES.get(expected, 'its release')})"
        )


def load_parameters(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                    allowed_missing: tuple[str, ...] = ()) -> LoadReport:
    """Copy `state_dict` into `model`, checking shapes, and log what is missing or unexpected.

    Names that start with a prefix in `allowed_missing` may stay missing (freshly initialised heads).
    Any other missing name, or a shape that does not fit, raises CheckpointMismatchError.
    """
    own_state = model.state_dict()
    report = LoadReport(
        missing=sorted(name for name in own_state if name not in state_dict),
        unexpected=sorted(name for name in state_dict if name not in own_state),
    )

    wrong_shapes = [
        f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own_state[name].shape)}"
        for name, tensor in state_dict.items()
        if name in own_state and tuple(tensor.shape) != tuple(own_state[name].shape)
    ]
    if wrong_shapes:
        raise CheckpointMismatchError(
            f"{source} does not fit the model built from the config: " + "; ".join(wrong_shapes[:5])
            + (f" and {len(wrong_shapes) - 5} more" if len(wrong_shapes) > 5 else "")
            + ". Build the model from the checkpoint's own sizes, or pass a checkpoint of this size"
        )

    required_missing = [name for name in report.missing if not name.startswith(allowed_missing)]
    if required_missing:
        raise CheckpointMismatchError(
            f"{source} lacks {len(required_missing)} parameters the model needs ({report.summary()}); "
            "pass a complete checkpoint of this model"
        )

    usable = {name: tensor for name, tensor in state_dict.items() if name in own_state}
    model.load_state_dict(usable, strict=False)
    if report.missing or report.unexpected:
        logger.warning("loaded %s with %s", source, report.summary())
    else:
        logger.info("loaded %s: all %d parameters matched", source, len(usable))
    return report
