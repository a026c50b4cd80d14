"""The TeachCLIP student: CLIP4Clip with a seqTransf temporal encoder and the AFA frame weights.

Parameter names follow TeachCLIP's released checkpoints: `clip.*`, `frame_position_embeddings`,
`transformerClip.resblocks.*`, `frameLinear` and `frameLinear2`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.clip import CLIP, CLIPConfig, Transformer, convert_clip_weights_to_fp16
from pipeline.models.temporal import encode_frame_sequence, init_from_clip_text

logger = logging.getLogger(__name__)

# Temperature of the AFA softmax that pools frames into the video vector; the frame weights
# handed to the fine distillation loss use temperature 1.
AFA_POOLING_TEMPERATURE = 0.1
# Standard deviation of the fresh Linear and Embedding weights (BERT's initializer_range).
INIT_STD = 0.02
PRECISIONS = ("fp32", "reference_fp16")


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of the student; `clip` must have equal embedding and text widths."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)
    temporal_layers: int = 4
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StudentConfig":
        values = dict(values)
        values["clip"] = CLIPConfig(**values["clip"])
        return cls(**values)


@dataclass
class VideoStates:
    """Per-frame output of the temporal encoder and the AFA block for a batch of videos."""

    frame_states: torch.Tensor  # [videos, frames, dim]
    frame_logits: torch.Tensor  # [videos, frames], raw AFA weights before any softmax


class TeachCLIPStudent(nn.Module):
    """CLIP4Clip (seqTransf) with AFA pooling; one vector per video and one per text."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        if config.clip.embed_dim != config.clip.text_width:
            raise ValueError(
                f"the student needs CLIP's embed_dim ({config.clip.embed_dim}) equal to its text width "
                f"({config.clip.text_width}), because its temporal encoder starts from CLIP's text blocks; "
                "use a ViT-B CLIP or a config with equal widths"
            )
        if config.precision not in PRECISIONS:
            raise ValueError(f"precision '{config.precision}' is not one of {PRECISIONS}")

        self.config = config
        width = config.clip.embed_dim
        self.clip = CLIP(config.clip)
        self.frame_position_embeddings = nn.Embedding(config.clip.context_length, width)
        self.transformerClip = Transformer(width, config.temporal_layers, config.clip.text_heads)
        self.frameLinear = nn.Linear(width, width)
        self.frameLinear2 = nn.Linear(width, 1)
        self.init_fresh_parameters()

        if config.precision == "reference_fp16":
            convert_clip_weights_to_fp16(self.clip)

    def init_fresh_parameters(self) -> None:
        """Initialise the non-CLIP parameters as CLIP4Clip does (normal 0.02, zero biases, unit LayerNorms)."""
        for name, module in self.named_modules():
            if name.startswith("clip"):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def init_from_clip(self, clip_state_dict: dict[str, torch.Tensor]) -> None:
        """Load CLIP's weights and start the temporal encoder from CLIP's text tower, as CLIP4Clip does."""
        self.clip.load_state_dict(clip_state_dict)
        copied = init_from_clip_text(self.clip, self.frame_position_embeddings, self.transformerClip)
        if self.config.precision == "reference_fp16":
            convert_clip_weights_to_fp16(self.clip)
        logger.info("student initialised from CLIP; %d temporal blocks copied from the text tower", copied)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text features [texts, dim] in float32 from input_ids [texts, words]."""
        return self.clip.encode_text(input_ids).float()

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame features [videos, frames, dim] from normalised frames [videos, frames, 3, H, W]."""
        videos, frame_count = frames.shape[:2]
        images = frames.reshape(videos * frame_count, *frames.shape[2:])  # [videos * frames, 3, H, W]
        features = self.clip.encode_image(images).float()
        return features.reshape(videos, frame_count, -1)  # [videos, frames, dim]

    def video_states(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> VideoStates:
        """Run the temporal encoder and the AFA block over frame features [videos, frames, dim]."""
        states = encode_frame_sequence(
            frame_features, frame_mask, self.frame_position_embeddings, self.transformerClip
        )
        frame_logits = self.frameLinear2(F.relu(self.frameLinear(states))).squeeze(-1)  # [videos, frames]
        return VideoStates(frame_states=states, frame_logits=frame_logits)

    @staticmethod
    def pool_video(states: VideoStates) -> torch.Tensor:
        """Pool frames with softmax(raw / 0.1) into one unit-length vector per video [videos, dim].

        Padded frame positions take part in the softmax, as in the released checkpoints' training.
        """
        frame_states = F.normalize(states.frame_states, dim=-1)
        pooling = torch.softmax(states.frame_logits / AFA_POOLING_TEMPERATURE, dim=1)  # [videos, frames]
        video = (frame_states * pooling.unsqueeze(-1)).sum(dim=1)  # [videos, dim]
        return F.normalize(video, dim=-1)

    def similarity(self, text_features: torch.Tensor, states: VideoStates) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [texts, videos] scaled by exp(logit_scale), and frame weights softmax(raw) [videos, frames]."""
        video_vectors = self.pool_video(states)
        text_vectors = F.normalize(text_features, dim=-1)
        logits = self.clip.logit_scale.exp().float() * text_vectors @ video_vectors.t()
        frame_weights = torch.softmax(states.frame_logits, dim=1)
        return logits, frame_weights

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Encode normalised frames [videos, frames, 3, H, W] into holistic retrieval vectors [videos, dim]."""
        return self.pool_video(self.video_states(self.encode_frames(frames), frame_mask))

    def forward(self, input_ids: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute batch logits [texts, videos] and frame weights [videos, frames] for one training batch.

        `gather` concatenates a tensor over processes. With it, each process passes its slice of the
        global batch and receives the logits of the whole global batch.
        """
        text_features = self.encode_text(input_ids)
        states = self.video_states(self.encode_frames(frames), frame_mask)
        if gather is not None:
            text_features = gather(text_features)
            states = VideoStates(frame_states=gather(states.frame_states), frame_logits=gather(states.frame_logits))
        return self.similarity(text_features, states)

    def clamp_logit_scale(self, max_log_scale: float) -> None:
        """Clamp logit_scale to at most `max_log_scale` (ln 100 in TeachCLIP), after each optimiser step."""
        with torch.no_grad():
            self.clip.logit_scale.clamp_(max=max_log_scale)
