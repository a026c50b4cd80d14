"""X-Pool as a teacher: each text pools a video's frame features by one-head cross-attention.

Checkpoints are `{"state_dict": ..., "epoch": ...}` with CLIP under `clip.` in HuggingFace's
names and the pooling block under `pool_frames.`. CLIP is renamed to OpenAI's layout on load.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline.models.clip import CLIP, CLIPConfig
from pipeline.models.teachers.base import (
    Features,
    Teacher,
    check_precision,
    check_text_inputs,
    check_video_inputs,
    unit,
)
from pipeline.models.teachers.hf_clip import hf_to_openai, openai_to_hf

logger = logging.getLogger(__name__)

CLIP_PREFIX = "clip."
# Epoch number written into the checkpoints of random teachers, in X-Pool's checkpoint layout.
TINY_CHECKPOINT_EPOCH = 0


@dataclass(frozen=True)
class XPoolConfig:
    """Architecture of X-Pool. The pooling block is as wide as CLIP's embedding and has one head."""

    clip: CLIPConfig = field(default_factory=CLIPConfig)
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


class XPoolCrossAttention(nn.Module):
    """One-head attention of each text (query) over each video's frames (keys and values)."""

    def __init__(self, width: int):
        super().__init__()
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def attention_weights(self, texts: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Softmax over frames [videos, texts, frames] of scaled query-key products."""
        queries = self.q_proj(texts)  # [texts, width]
        keys = self.k_proj(frames)  # [videos, frames, width]
        scores = torch.einsum("td,vfd->vtf", queries, keys) / math.sqrt(queries.shape[-1])
        return torch.softmax(scores, dim=-1)  # [videos, texts, frames]

    def forward(self, texts: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attended frames [videos, texts, width] after out_proj, and the attention weights [videos, texts, frames]."""
        weights = self.attention_weights(texts, frames)
        values = self.v_proj(frames)  # [videos, frames, width]
        attended = weights @ values  # [videos, texts, width]
        return self.out_proj(attended), weights


class XPoolFramePooling(nn.Module):
    """X-Pool's pooling block: LayerNorm, cross-attention, LayerNorm, a residual linear layer, LayerNorm.

    X-Pool trains with dropout 0.3 on the residual branch; teachers run in evaluation mode, where
    dropout is the identity, so it is left out.
    """

    def __init__(self, width: int):
        super().__init__()
        self.cross_attn = XPoolCrossAttention(width)
        self.linear_proj = nn.Linear(width, width)
        self.layer_norm1 = nn.LayerNorm(width)
        self.layer_norm2 = nn.LayerNorm(width)
        self.layer_norm3 = nn.LayerNorm(width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start every projection as the identity with zero bias, as X-Pool does."""
        for layer in (self.cross_attn.q_proj, self.cross_attn.k_proj, self.cross_attn.v_proj,
                      self.cross_attn.out_proj, self.linear_proj):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, texts: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool frames [videos, frames, dim] for each text [texts, dim] into [videos, texts, dim], with the weights."""
        attended, weights = self.cross_attn(self.layer_norm1(texts), self.layer_norm1(frames))
        attended = self.layer_norm2(attended)
        pooled = self.layer_norm3(attended + self.linear_proj(attended))
        return pooled, weights

    def positive_attention(self, texts: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Attention weights [pairs, frames] of text i over the frames of video i."""
        queries = self.cross_attn.q_proj(self.layer_norm1(texts))  # [pairs, dim]
        keys = self.cross_attn.k_proj(self.layer_norm1(frames))  # [pairs, frames, dim]
        scores = torch.einsum("pd,pfd->pf", queries, keys) / math.sqrt(queries.shape[-1])
        return torch.softmax(scores, dim=-1)


class XPoolTeacher(Teacher):
    """X-Pool: logits are exp(logit_scale) times the cosine of a text and the video pooled for it.

    Frame targets are the pooling attention of text i over the frames of video i. The frame mask
    is ignored, so padded frames are attended to, as in X-Pool and TeachCLIP.
    """

    name = "xpool"

    def __init__(self, config: XPoolConfig):
        super().__init__()
        check_precision(config.precision)
        self.config = config
        self.clip = CLIP(config.clip)
        self.pool_frames = XPoolFramePooling(config.clip.embed_dim)
        # TeachCLIP runs X-Pool's HuggingFace CLIP in float32 and never casts it, so
        # "reference_fp16" keeps float32 here.
        if config.precision == "reference_fp16":
            logger.info("X-Pool keeps CLIP in float32 under reference_fp16, as TeachCLIP does")

    @classmethod
    def tiny_config(cls, clip_config: CLIPConfig, max_words: int, max_frames: int) -> XPoolConfig:
        return XPoolConfig(clip=clip_config)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], source: str,
                        precision: str = "fp32") -> "XPoolTeacher":
        openai_state_dict = hf_to_openai(state_dict, prefix=CLIP_PREFIX)
        clip_config = CLIPConfig.from_state_dict(openai_state_dict, prefix=CLIP_PREFIX)
        config = XPoolConfig(clip=clip_config, precision=precision)
        teacher = cls(config)
        teacher.load_release_state_dict(openai_state_dict, source)
        logger.info("built xpool teacher from %s: %s", source, config)
        return teacher.eval()

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        return openai_to_hf(dict(self.state_dict()), prefix=CLIP_PREFIX)

    def release_checkpoint(self) -> dict:
        return {"state_dict": self.release_state_dict(), "epoch": TINY_CHECKPOINT_EPOCH}

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        """Encode texts into CLIP text features {"text": [texts, dim]}, left unnormalised for the pooling block.

        HuggingFace's text tower also masks padded tokens, but under the causal mask no token up to
        the end-of-text token can see them, so the feature equals the unmasked one.
        """
        check_text_inputs(input_ids, attention_mask)
        return {"text": self.clip.encode_text(input_ids).float()}

    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Features:
        """Encode frames into CLIP frame features {"frames": [videos, frames, dim]}, ignoring the frame mask."""
        # NOTE: X-Pool's code reshapes every video to 12 frames; other frame counts run here
        # but no released X-Pool model was trained with them.
        check_video_inputs(frames, frame_mask)
        videos, frame_count = frames.shape[:2]
        images = frames.reshape(videos * frame_count, *frames.shape[2:])  # [videos * frames, 3, H, W]
        features = self.clip.encode_image(images).float()
        return {"frames": features.reshape(videos, frame_count, -1)}  # [videos, frames, dim]

    def score(self, texts: Features, videos: Features) -> torch.Tensor:
        """Score texts against videos [texts, videos]; memory grows as videos x texts x dim, so chunk large sets."""
        pooled, _ = self.pool_frames(texts["text"], videos["frames"])  # [videos, texts, dim]
        cosine = torch.einsum("td,vtd->tv", unit(texts["text"]), unit(pooled))  # [texts, videos]
        return self.clip.logit_scale.exp().float() * cosine

    def positive_frame_targets(self, texts: Features, videos: Features) -> torch.Tensor:
        return self.pool_frames.positive_attention(texts["text"], videos["frames"])
