"""The interface every teacher implements, and helpers to select and join encoded features.

A teacher encodes texts and videos separately into dicts of tensors with items along dim 0.
Its pairwise head then scores any texts against any videos, so each item is encoded once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.checkpoints import load_parameters
from pipeline.models.clip import CLIPConfig

logger = logging.getLogger(__name__)

# "fp32" runs everything in float32. "reference_fp16" casts CLIP's weights to float16 as
# TeachCLIP's code does (OpenAI's convert_weights), while the heads stay float32.
PRECISIONS = ("fp32", "reference_fp16")

Features = dict[str, torch.Tensor]


class Teacher(nn.Module, ABC):
    """A retrieval model whose batch logits and frame distributions are distillation targets."""

    name: ClassVar[str]

    @abstractmethod
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        """Encode token ids [texts, words] into the features the pairwise head needs."""

    @abstractmethod
    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Features:
        """Encode normalised frames [videos, frames, 3, H, W] into the features the pairwise head needs."""

    @abstractmethod
    def score(self, texts: Features, videos: Features) -> torch.Tensor:
        """Score texts against videos with the teacher's own similarity head: logits [texts, videos]."""

    @abstractmethod
    def positive_frame_targets(self, texts: Features, videos: Features) -> torch.Tensor:
        """Return, for each positive pair (text i, video i), a distribution [pairs, frames] over video i's frames."""

    @abstractmethod
    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the parameters named and shaped as in the model's public checkpoints."""

    @classmethod
    @abstractmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], source: str,
                        precision: str = "fp32") -> "Teacher":
        """Build the teacher from a public checkpoint's state dict, sized by the checkpoint's own shapes."""

    @classmethod
    @abstractmethod
    def tiny_config(cls, clip_config: CLIPConfig, max_words: int, max_frames: int):
        """Return the config of a small model of this teacher around `clip_config`, for tests and the demo."""

    def release_checkpoint(self) -> dict:
        """Return the object that the model's public checkpoint files contain, for torch.save."""
        return self.release_state_dict()

    def batch_targets(self, texts: Features, videos: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits [B, B] and frame targets [B, F] of one batch in which text i pairs with video i.

        Logits have texts as rows and videos as columns.
        """
        text_count = item_count(texts)
        video_count = item_count(videos)
        if text_count != video_count:
            raise ValueError(
                f"a training batch pairs text i with video i, but got {text_count} texts and {video_count} videos; "
                "pass the encoded features of the same batch of samples"
            )
        logits = self.score(texts, videos)
        frame_targets = self.positive_frame_targets(texts, videos)
        return logits, frame_targets

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, frames: torch.Tensor,
                frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one batch and return its logits [B, B] and frame targets [B, F] (the online path)."""
        texts = self.encode_texts(input_ids, attention_mask)
        videos = self.encode_videos(frames, frame_mask)
        return self.batch_targets(texts, videos)

    def describe(self) -> dict:
        """Return the teacher's name and architecture as JSON-able values, for cache fingerprints."""
        return {"name": self.name, "config": self.config.to_dict()}

    def load_release_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Copy a public-layout state dict into this teacher.

        Raises CheckpointMismatchError on missing or misshapen parameters.
        """
        load_parameters(self, state_dict, source)


def item_count(features: Features) -> int:
    """Return the number of items (dim 0) that every tensor of an encoded-features dict shares."""
    counts = {name: tensor.shape[0] for name, tensor in features.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"encoded features disagree on the number of items: {counts}")
    return next(iter(counts.values()))


def select_items(features: Features, index: torch.Tensor) -> Features:
    """Select the rows `index` of every tensor in an encoded-features dict, for example one batch's texts."""
    return {name: tensor.index_select(0, index.to(tensor.device)) for name, tensor in features.items()}


def concatenate_items(chunks: list[Features]) -> Features:
    """Join encoded-features dicts of several chunks of items along dim 0."""
    if not chunks:
        raise ValueError("no encoded chunks to concatenate")
    return {name: torch.cat([chunk[name] for chunk in chunks], dim=0) for name in chunks[0]}


def check_text_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_words: int | None = None) -> None:
    """Raise ValueError unless input_ids and attention_mask are [texts, words] of one shape."""
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"expected input_ids and attention_mask of shape [texts, words], got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    if max_words is not None and input_ids.shape[1] != max_words:
        raise ValueError(
            f"this teacher was trained with max_words={max_words} and weights every token position, "
            f"but got texts of {input_ids.shape[1]} tokens; tokenise with max_words={max_words}"
        )


def check_video_inputs(frames: torch.Tensor, frame_mask: torch.Tensor, max_frames: int | None = None) -> None:
    """Raise ValueError unless frames are [videos, frames, 3, H, W] with a matching frame_mask [videos, frames]."""
    if frames.dim() != 5 or frames.shape[2] != 3 or tuple(frame_mask.shape) != tuple(frames.shape[:2]):
        raise ValueError(
            f"expected normalised frames [videos, frames, 3, H, W] and frame_mask [videos, frames], "
            f"got {tuple(frames.shape)} and {tuple(frame_mask.shape)}"
        )
    if max_frames is not None and frames.shape[1] != max_frames:
        raise ValueError(
            f"this teacher was trained with max_frames={max_frames} and weights every frame position, "
            f"but got {frames.shape[1]} frames per video; sample videos with max_frames={max_frames}"
        )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' is not one of {PRECISIONS}")


def sentence_frame_distribution(sentences: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Softmax over frames of the cosine between sentence i [pairs, dim] and each frame of video i [pairs, frames, dim].

    Both inputs are unit-length. Every frame position takes part, padded ones included, and no
    temperature applies, as in TeachCLIP's teacher targets.
    """
    cosine = torch.einsum("pd,pfd->pf", sentences, frames)  # [pairs, frames]
    return torch.softmax(cosine, dim=-1)


def unit(features: torch.Tensor) -> torch.Tensor:
    """Scale vectors along the last dim to unit length."""
    return F.normalize(features, dim=-1)
