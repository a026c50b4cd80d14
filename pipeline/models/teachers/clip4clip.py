"""CLIP4Clip as a teacher: CLIP frame features, a meanP or seqTransf temporal head, cosine logits.

X-CLIP and TS2-Net build on the same parts (`clip.*`, `frame_position_embeddings`,
`transformerClip.*`), so their teachers subclass this one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline.models.checkpoints import CheckpointMismatchError
from pipeline.models.clip import CLIP, CLIPConfig, Transformer, convert_clip_weights_to_fp16
from pipeline.models.teachers.base import (
    Features,
    Teacher,
    check_precision,
    check_text_inputs,
    check_video_inputs,
    sentence_frame_distribution,
    unit,
)
from pipeline.models.temporal import encode_frame_sequence

logger = logging.getLogger(__name__)

SIM_HEADERS = ("meanP", "seqTransf")
# Keys of CLIP4Clip variants this package does not implement, with the variant's name.
UNSUPPORTED_HEADER_KEYS = (
    ("lstm_visual.weight_ih_l0", "seqLSTM"),
    ("similarity_dense.weight", "tightTransf"),
)
TEMPORAL_BLOCK_PREFIX = "transformerClip.resblocks."
# Temporal blocks of the small random teachers; the released models use 4.
TINY_TEMPORAL_LAYERS = 2


@dataclass(frozen=True)
class CLIP4ClipConfig:
    """Architecture of a CLIP4Clip-style video model; the temporal encoder exists only for seqTransf."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)
    sim_header: str = "seqTransf"
    temporal_layers: int = 4
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


def read_sim_header(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """Tell meanP from seqTransf by the temporal encoder's keys; reject the variants not implemented."""
    for key, header in UNSUPPORTED_HEADER_KEYS:
        if key in state_dict:
            raise CheckpointMismatchError(
                f"{source} is a CLIP4Clip-family model with the '{header}' similarity head (it has '{key}'); "
                f"only {SIM_HEADERS} are implemented, so pass a checkpoint trained with one of those"
            )
    if TEMPORAL_BLOCK_PREFIX + "0.attn.in_proj_weight" in state_dict:
        return "seqTransf"
    return "meanP"


def count_temporal_layers(state_dict: dict[str, torch.Tensor]) -> int:
    blocks = {key[len(TEMPORAL_BLOCK_PREFIX):].split(".")[0] for key in state_dict
              if key.startswith(TEMPORAL_BLOCK_PREFIX)}
    return len(blocks)


def masked_mean(states: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Average states [videos, frames, dim] over the frames that frame_mask marks; a video with none gets 0."""
    weights = frame_mask.to(states.dtype).unsqueeze(-1)  # [videos, frames, 1]
    counts = weights.sum(dim=1)  # [videos, 1]
    counts = torch.where(counts == 0, torch.ones_like(counts), counts)
    return (states * weights).sum(dim=1) / counts  # [videos, dim]


class CLIP4ClipTeacher(Teacher):
    """CLIP4Clip (meanP or seqTransf): logits are exp(logit_scale) times the text-video cosine.

    Frame targets are the softmax over all frame positions of the cosine between sentence i and
    each CLIP frame feature of video i. X-CLIP's teacher uses the same definition, because
    TeachCLIP defines no frame targets for CLIP4Clip.
    """

    name = "clip4clip"

    def __init__(self, config: CLIP4ClipConfig):
        super().__init__()
        check_precision(config.precision)
        if config.sim_header not in SIM_HEADERS:
            raise ValueError(f"sim_header '{config.sim_header}' is not one of {SIM_HEADERS}")
        if config.sim_header == "seqTransf" and config.clip.embed_dim != config.clip.text_width:
            raise ValueError(
                f"seqTransf runs CLIP text blocks over frame features, so CLIP's embed_dim ({config.clip.embed_dim}) "
                f"must equal its text width ({config.clip.text_width})"
            )

        self.config = config
        self.clip = CLIP(config.clip)
        if config.sim_header == "seqTransf":
            width = config.clip.embed_dim
            self.frame_position_embeddings = nn.Embedding(config.clip.context_length, width)
            self.transformerClip = Transformer(width, config.temporal_layers, config.clip.text_heads)
        if config.precision == "reference_fp16":
            convert_clip_weights_to_fp16(self.clip)

    @classmethod
    def read_config(cls, state_dict: dict[str, torch.Tensor], source: str, precision: str) -> CLIP4ClipConfig:
        sim_header = read_sim_header(state_dict, source)
        return CLIP4ClipConfig(
            clip=CLIPConfig.from_state_dict(state_dict, prefix="clip."),
            sim_header=sim_header,
            temporal_layers=count_temporal_layers(state_dict) if sim_header == "seqTransf" else 0,
            precision=precision,
        )

    @classmethod
    def tiny_config(cls, clip_config: CLIPConfig, max_words: int, max_frames: int) -> CLIP4ClipConfig:
        return CLIP4ClipConfig(clip=clip_config, sim_header="seqTransf", temporal_layers=TINY_TEMPORAL_LAYERS)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], source: str,
                        precision: str = "fp32") -> "CLIP4ClipTeacher":
        config = cls.read_config(state_dict, source, precision)
        teacher = cls(config)
        teacher.load_release_state_dict(state_dict, source)
        logger.info("built %s teacher from %s: %s", cls.name, source, config)
        return teacher.eval()

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode normalised frames [videos, frames, 3, H, W] into float32 CLIP features [videos, frames, dim]."""
        videos, frame_count = frames.shape[:2]
        images = frames.reshape(videos * frame_count, *frames.shape[2:])  # [videos * frames, 3, H, W]
        features = self.clip.encode_image(images).float()
        return features.reshape(videos, frame_count, -1)  # [videos, frames, dim]

    def temporal_states(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Return per-frame states [videos, frames, dim]: seqTransf's output, or the input itself for meanP."""
        if self.config.sim_header == "meanP":
            return frame_features
        return encode_frame_sequence(frame_features, frame_mask, self.frame_position_embeddings, self.transformerClip)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        """Encode texts into unit sentence features {"sentence": [texts, dim]}.

        CLIP's text tower is causal, so padding after the end-of-text token needs no mask.
        """
        check_text_inputs(input_ids, attention_mask)
        return {"sentence": unit(self.clip.encode_text(input_ids).float())}

    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Features:
        """Encode frames into unit video vectors {"video": [videos, dim]} and unit CLIP frame features
        {"frames": [videos, frames, dim]}."""
        check_video_inputs(frames, frame_mask)
        frame_features = self.encode_frames(frames)
        states = self.temporal_states(frame_features, frame_mask)
        video = unit(masked_mean(unit(states), frame_mask))
        return {"video": video, "frames": unit(frame_features)}

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    def score(self, texts: Features, videos: Features) -> torch.Tensor:
        return self.logit_scale() * texts["sentence"] @ videos["video"].t()  # [texts, videos]

    def positive_frame_targets(self, texts: Features, videos: Features) -> torch.Tensor:
        return sentence_frame_distribution(texts["sentence"], videos["frames"])
