"""X-CLIP as a teacher: multi-grained (video, sentence, frame, word) similarity with learned weights.

Parameter names follow X-CLIP's released checkpoints: CLIP4Clip's (`clip.*`,
`frame_position_embeddings`, `transformerClip.*`) plus the eight weight matrices below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.teachers.base import Features, check_text_inputs, check_video_inputs, unit
from pipeline.models.clip import CLIPConfig
from pipeline.models.teachers.clip4clip import TINY_TEMPORAL_LAYERS, CLIP4ClipConfig, CLIP4ClipTeacher

logger = logging.getLogger(__name__)

# Temperature of X-CLIP's attention over similarity scores: softmax(scores / 0.01) weights
# each score before it is summed, which makes the sum close to a (learned-weighted) maximum.
ATTENTION_TEMPERATURE = 0.01
# The logits are the mean of four similarity terms.
TERM_COUNT = 4


@dataclass(frozen=True)
class XCLIPConfig(CLIP4ClipConfig):
    """X-CLIP's architecture; its word and frame weight matrices fix max_words and max_frames."""

    max_words: int = 32
    max_frames: int = 12


def attention_sum(scores: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum scores along `dim`, each weighted by softmax(scores / 0.01) along `dim` mixed by `weight`.

    `weight` is a learned [n, n] matrix over the positions of `dim` (identity at initialisation).
    """
    moved = scores.movedim(dim, -1)  # [..., n]
    attention = torch.softmax(moved / ATTENTION_TEMPERATURE, dim=-1) @ weight  # [..., n]
    return (attention * moved).sum(dim=-1)


class XCLIPTeacher(CLIP4ClipTeacher):
    """X-CLIP: mean of video-sentence, video-word, sentence-frame and frame-word logits.

    Word terms use every one of the max_words token positions, padding included, and
    sentence-frame terms every frame position, as the released checkpoints were trained.
    Frame targets are the softmax over frames of the cosine between sentence i and each
    CLIP frame feature of video i.
    """

    name = "xclip"

    def __init__(self, config: XCLIPConfig):
        super().__init__(config)
        dim, words, frames = config.clip.embed_dim, config.max_words, config.max_frames
        # Coarse grain: sentence x video.
        self.global_mat_weight = nn.Parameter(torch.eye(dim))
        # Cross grain: words x video and sentence x frames.
        self.word_logit_weight = nn.Parameter(torch.eye(words))
        self.frame_logit_weight = nn.Parameter(torch.eye(frames))
        # Fine grain: words x frames.
        self.local_mat_weight = nn.Parameter(torch.eye(dim))
        self.frame_mat_weight = nn.Parameter(torch.eye(frames))
        self.word_mat_weight = nn.Parameter(torch.eye(words))
        self.frame_mat_weight2 = nn.Parameter(torch.eye(frames))
        self.word_mat_weight2 = nn.Parameter(torch.eye(words))

    @classmethod
    def read_config(cls, state_dict: dict[str, torch.Tensor], source: str, precision: str) -> XCLIPConfig:
        base = super().read_config(state_dict, source, precision)
        return XCLIPConfig(
            clip=base.clip,
            sim_header=base.sim_header,
            temporal_layers=base.temporal_layers,
            precision=precision,
            max_words=state_dict["word_logit_weight"].shape[0],
            max_frames=state_dict["frame_logit_weight"].shape[0],
        )

    @classmethod
    def tiny_config(cls, clip_config: CLIPConfig, max_words: int, max_frames: int) -> XCLIPConfig:
        return XCLIPConfig(clip=clip_config, sim_header="seqTransf", temporal_layers=TINY_TEMPORAL_LAYERS,
                           max_words=max_words, max_frames=max_frames)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        """Encode texts into unit sentence features {"sentence": [texts, dim]} and unit token features {"words"}."""
        check_text_inputs(input_ids, attention_mask, self.config.max_words)
        tokens = self.clip.encode_text_tokens(input_ids).float()  # [texts, words, dim]
        end_positions = input_ids.argmax(dim=-1)
        sentence = tokens[torch.arange(tokens.shape[0], device=tokens.device), end_positions]
        return {"sentence": unit(sentence), "words": unit(tokens)}

    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Features:
        check_video_inputs(frames, frame_mask, self.config.max_frames)
        return super().encode_videos(frames, frame_mask)

    def score(self, texts: Features, videos: Features) -> torch.Tensor:
        """Score texts against videos [texts, videos].

        Memory grows as texts x words x videos x frames, so score large sets in chunks.
        """
        sentence, words = texts["sentence"], texts["words"]
        video, frames = videos["video"], videos["frames"]
        logit_scale = self.logit_scale()

        video_sentence = (sentence @ self.global_mat_weight) @ video.t()  # [texts, videos]

        word_video = torch.einsum("twd,vd->tvw", words, video)  # [texts, videos, words]
        video_word = attention_sum(word_video, self.word_logit_weight, dim=-1)  # [texts, videos]

        sentence_frame_scores = torch.einsum("td,vfd->tvf", sentence, frames)  # [texts, videos, frames]
        sentence_frame = attention_sum(sentence_frame_scores, self.frame_logit_weight, dim=-1)  # [texts, videos]

        frame_word = self.frame_word_similarity(words, frames)  # [texts, videos]

        return logit_scale * (video_sentence + video_word + sentence_frame + frame_word) / TERM_COUNT

    def frame_word_similarity(self, words: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Compute X-CLIP's fine-grained term [texts, videos].

        `words` are unit token features [texts, words, dim], `frames` unit frame features [videos, frames, dim].
        """
        scores = torch.einsum("twd,vfd->tvwf", words @ self.local_mat_weight, frames)  # [texts, videos, words, frames]

        per_frame = attention_sum(scores, self.word_mat_weight, dim=2)  # [texts, videos, frames]
        per_word = attention_sum(scores, self.frame_mat_weight, dim=3)  # [texts, videos, words]

        sentence_to_frames = attention_sum(per_frame, self.frame_mat_weight2, dim=-1)  # [texts, videos]
        video_to_words = attention_sum(per_word, self.word_mat_weight2, dim=-1)  # [texts, videos]
        return (sentence_to_frames + video_to_words) / 2
