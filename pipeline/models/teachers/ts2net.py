"""TS2-Net as a teacher: token shift and token selection in the vision tower, frame-level similarity.

Parameter names follow TS2-Net's released checkpoints: CLIP4Clip's (`clip.*`,
`frame_position_embeddings`, `transformerClip.*`) plus the token selectors and the visual
prompt encoder. Blocks with token shift keep their attention under `attn.net.*` there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.clip import CLIPConfig, ResidualAttentionBlock, convert_clip_weights_to_fp16
from pipeline.models.teachers.base import (
    Features,
    check_text_inputs,
    check_video_inputs,
    sentence_frame_distribution,
    unit,
)
from pipeline.models.teachers.clip4clip import TINY_TEMPORAL_LAYERS, CLIP4ClipConfig, CLIP4ClipTeacher
from pipeline.models.teachers.token_selection import PatchScorePredictor, VisualPromptEncoder, perturbed_top_k
from pipeline.models.temporal import frame_attention_mask

logger = logging.getLogger(__name__)

# TS2-Net's patch shift: the token rows are cut into this many folds, and in each fold one
# patch comes from the previous frame and another, 3 positions later, from the next frame.
SHIFT_DIVISIONS = 7
NEXT_FRAME_OFFSET = 3
# The frame-level similarity sharpens its softmax over frames by this factor.
FRAME_SOFTMAX_SCALE = 4.0
# Logit given to masked frames before that softmax, as in TS2-Net's code.
MASKED_FRAME_LOGIT = -1e18
# Prompt tokens of the visual prompt encoder (a 2 x 2 pooled grid) in the released checkpoints.
VISUAL_PROMPT_LENGTH = 4

SHIFTED_ATTENTION = re.compile(r"^clip\.visual\.transformer\.resblocks\.(\d+)\.attn\.net\.")


@dataclass(frozen=True)
class TS2NetConfig(CLIP4ClipConfig):
    """TS2-Net's architecture and the settings of its perturbed top-k patch selection."""

    # Vision blocks whose attention input is patch-shifted across neighbouring frames.
    shift_layers: tuple[int, ...] = ()
    # Patches kept per frame besides the class token.
    selected_patches: int = 3
    # Perturbed top-k: noise samples per frame and their standard deviation, as in TS2-Net.
    selection_samples: int = 500
    selection_sigma: float = 0.05
    # Seed of the selection noise, so the same frames always give the same targets.
    selection_seed: int = 0


def unwrap_shifted_attention(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `...resblocks.N.attn.net.*` (TS2-Net's shifted blocks) to the plain `...resblocks.N.attn.*`."""
    return {
        key.replace(".attn.net.", ".attn.", 1) if SHIFTED_ATTENTION.match(key) else key: tensor
        for key, tensor in state_dict.items()
    }


def shift_patches(tokens: torch.Tensor, frames_per_video: int) -> torch.Tensor:
    """Swap some patch tokens [tokens, videos * frames, width] with the same patch of the neighbouring frames.

    Frame t takes patches 1, 1 + fold, ... from frame t - 1 and patches 4, 4 + fold, ... from frame
    t + 1 (fold = tokens // 7); the first and last frames keep the patches they have no neighbour for.
    """
    length, images, width = tokens.shape
    fold = length // SHIFT_DIVISIONS
    grouped = tokens.permute(1, 0, 2).reshape(images // frames_per_video, frames_per_video, length, width)
    shifted = grouped.clone()  # [videos, frames, tokens, width]

    from_previous = torch.arange(1, length, fold, device=tokens.device)
    from_next = torch.arange(1 + NEXT_FRAME_OFFSET, length, fold, device=tokens.device)
    shifted[:, 1:, from_previous] = grouped[:, :-1, from_previous]
    shifted[:, :-1, from_next] = grouped[:, 1:, from_next]

    return shifted.reshape(images, length, width).permute(1, 0, 2)  # [tokens, videos * frames, width]


class PatchShiftBlock(ResidualAttentionBlock):
    """A CLIP vision block whose attention reads patch-shifted tokens, while the residual adds the unshifted ones."""

    def forward(self, x: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        shifted = shift_patches(self.ln_1(x), frames_per_video)
        x = x + self.attn(shifted, shifted, shifted, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class TokenSelector(nn.Module):
    """Container named as TS2-Net's token selectors, so their scoring weights keep their checkpoint names."""

    def __init__(self, width: int, text: bool):
        super().__init__()
        self.score_predictor = PatchScorePredictor(width, text=text)


class TS2NetTeacher(CLIP4ClipTeacher):
    """TS2-Net: each frame keeps its class token and its top-scoring patches, a temporal transformer
    runs over all selected tokens, and texts are scored against the frames' class-token states.

    Frame targets are the softmax over all frame positions of the cosine between sentence i and
    those class-token states of video i. Loaded from a checkpoint, the patch-shifted blocks are
    the ones whose attention the checkpoint stores under `attn.net.*`.
    """

    name = "ts2net"

    def __init__(self, config: TS2NetConfig):
        if config.sim_header != "seqTransf":
            raise ValueError(
                f"TS2-Net's similarity needs the seqTransf temporal encoder, got sim_header '{config.sim_header}'"
            )
        super().__init__(config)
        vision_layers = config.clip.vision_layers
        if any(not 0 <= index < vision_layers for index in config.shift_layers):
            raise ValueError(f"shift_layers {config.shift_layers} must index the {vision_layers} vision blocks")

        blocks = self.clip.visual.transformer.resblocks
        for index in config.shift_layers:
            shifted = PatchShiftBlock(config.clip.vision_width, config.clip.vision_heads)
            shifted.load_state_dict(blocks[index].state_dict())
            blocks[index] = shifted
        if config.precision == "reference_fp16":
            convert_clip_weights_to_fp16(self.clip)  # again, for the blocks just replaced

        width = config.clip.embed_dim
        self.visual_prompt_encoder = VisualPromptEncoder(
            VISUAL_PROMPT_LENGTH, config.clip.vision_width, config.clip.vision_patch_size
        )
        self.visual_token_selector = TokenSelector(width, text=False)
        self.text_token_selector = TokenSelector(width, text=True)

    @classmethod
    def read_config(cls, state_dict: dict[str, torch.Tensor], source: str, precision: str) -> TS2NetConfig:
        # NOTE: TeachCLIP's copy of TS2-Net never shifts patches, and for a checkpoint that stores
        # blocks under `attn.net.*` it would load OpenAI CLIP's attention there instead. This
        # follows TS2-Net's own model, which shifts exactly those blocks.
        shift_layers = sorted({int(match[1]) for key in state_dict if (match := SHIFTED_ATTENTION.match(key))})
        base = super().read_config(unwrap_shifted_attention(state_dict), source, precision)
        return TS2NetConfig(
            clip=base.clip,
            sim_header=base.sim_header,
            temporal_layers=base.temporal_layers,
            precision=precision,
            shift_layers=tuple(shift_layers),
        )

    @classmethod
    def tiny_config(cls, clip_config: CLIPConfig, max_words: int, max_frames: int) -> TS2NetConfig:
        return TS2NetConfig(clip=clip_config, sim_header="seqTransf", temporal_layers=TINY_TEMPORAL_LAYERS)

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """Name the shifted blocks' attention `attn.net.*`, as TS2-Net's attention wrapper does."""
        renamed = {}
        for key, tensor in self.state_dict().items():
            for index in self.config.shift_layers:
                block = f"clip.visual.transformer.resblocks.{index}.attn."
                if key.startswith(block):
                    key = block + "net." + key[len(block):]
            renamed[key] = tensor
        return renamed

    def load_release_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        super().load_release_state_dict(unwrap_shifted_attention(state_dict), source)

    def encode_frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode frames [videos, frames, 3, H, W] into projected tokens [videos, frames, tokens, dim] in float32."""
        videos, frame_count = frames.shape[:2]
        images = frames.reshape(videos * frame_count, *frames.shape[2:])  # [videos * frames, 3, H, W]
        visual = self.clip.visual

        x = visual.embed_patches(images.type(self.clip.dtype)).permute(1, 0, 2)  # [tokens, images, width]
        for block in visual.transformer.resblocks:
            x = block(x, frame_count) if isinstance(block, PatchShiftBlock) else block(x)
        x = x.permute(1, 0, 2)  # [images, tokens, width]

        tokens = (visual.ln_post(x) @ visual.proj).float()  # [images, tokens, dim]
        return tokens.reshape(videos, frame_count, *tokens.shape[1:])

    def select_tokens(self, tokens: torch.Tensor, seed: int) -> torch.Tensor:
        """Keep each frame's class token and a soft top-k of its patches: [videos, frames, 1 + k, dim]."""
        videos, frame_count, token_count, dim = tokens.shape
        flat = tokens.reshape(videos * frame_count, token_count, dim)  # [images, tokens, dim]
        scores = self.visual_token_selector.score_predictor(flat)[:, 1:]  # [images, patches]

        # The same noise for frame position f of every video keeps each video's selection
        # independent of the other videos encoded with it.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(
            (frame_count, self.config.selection_samples, token_count - 1), generator=generator, dtype=torch.float32,
        ).to(device=scores.device, dtype=scores.dtype)
        noise = noise.repeat(videos, 1, 1)  # [images, samples, patches]
        indicators = perturbed_top_k(scores, self.config.selected_patches, noise, self.config.selection_sigma)

        patches = torch.einsum("ikp,ipd->ikd", indicators, flat[:, 1:])  # [images, k, dim]
        selected_tokens = torch.cat([flat[:, :1], patches], dim=1)  # [images, 1 + k, dim]
        return selected_tokens.reshape(videos, frame_count, selected_tokens.shape[1], dim)

    def frame_states(self, selected_tokens: torch.Tensor,
                     frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the temporal transformer over all selected tokens and return each frame's class-token state and mask.

        TS2-Net orders the tokens frame by frame but tiles the frame mask instead of repeating each
        entry, so token j is masked by frame j mod F, and position ids wrap at the embedding count.
        This reproduces that: the mask returned for frame f is the one its class token got, mask[(f * (1 + k)) mod F].
        """
        videos, frame_count, per_frame, dim = selected_tokens.shape
        sequence = selected_tokens.reshape(videos, frame_count * per_frame, dim)  # [videos, frames * (1 + k), dim]
        token_mask = frame_mask.repeat(1, per_frame)  # [videos, frames * (1 + k)], tiled

        position_count = self.frame_position_embeddings.num_embeddings
        positions = torch.arange(sequence.shape[1], device=sequence.device) % position_count
        x = sequence + self.frame_position_embeddings(positions).unsqueeze(0)
        attention_mask = frame_attention_mask(token_mask, self.transformerClip.heads, x.dtype)
        x = self.transformerClip(x.permute(1, 0, 2), attention_mask).permute(1, 0, 2)  # [videos, tokens, dim]
        x = x + sequence

        class_tokens = torch.arange(0, sequence.shape[1], per_frame, device=x.device)
        return x[:, class_tokens], token_mask[:, class_tokens].bool()  # [videos, frames, dim], [videos, frames]

    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                      selection_seed: int | None = None) -> Features:
        """Encode frames into unit class-token states {"frames": [videos, frames, dim]} and the mask
        {"frame_mask": [videos, frames]} that the similarity applies; `selection_seed` overrides the config's."""
        check_video_inputs(frames, frame_mask)
        seed = self.config.selection_seed if selection_seed is None else selection_seed
        selected_tokens = self.select_tokens(self.encode_frame_tokens(frames), seed)
        states, similarity_mask = self.frame_states(selected_tokens, frame_mask)
        return {"frames": unit(states), "frame_mask": similarity_mask}

    def score(self, texts: Features, videos: Features) -> torch.Tensor:
        """Score with TS2-Net's frame-level similarity: frame cosines weighted by a softmax over frames,
        times exp(logit_scale)."""
        frames, mask = videos["frames"], videos["frame_mask"].unsqueeze(-1)  # [videos, frames, 1]
        cosine = torch.einsum("vfd,td->vft", frames, texts["sentence"])  # [videos, frames, texts]

        # TS2-Net first mixes several text tokens per frame; with the sentence token alone that
        # step multiplies by exactly 1, so it is left out.
        weights = cosine * mask
        weights = weights / weights.norm(dim=1, keepdim=True)
        weights = weights.masked_fill(~mask, MASKED_FRAME_LOGIT)
        weights = torch.softmax(FRAME_SOFTMAX_SCALE * weights, dim=1)  # [videos, frames, texts]

        similarity = (weights * cosine).sum(dim=1)  # [videos, texts]
        return self.logit_scale() * similarity.t()

    def positive_frame_targets(self, texts: Features, videos: Features) -> torch.Tensor:
        return sentence_frame_distribution(texts["sentence"], videos["frames"])

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        check_text_inputs(input_ids, attention_mask)
        return super().encode_texts(input_ids, attention_mask)
