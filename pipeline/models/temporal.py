"""The seqTransf temporal encoder shared by the student, CLIP4Clip and X-CLIP.

The parameters live on the owning model (`frame_position_embeddings`, `transformerClip`), as in
the released checkpoints; this module holds the computation and the CLIP-based initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.clip import CLIP, Transformer

# Additive attention bias on padded frames; the reference uses -1e6 rather than -inf.
PADDED_FRAME_BIAS = -1_000_000.0


def frame_attention_mask(frame_mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [batch * heads, frames, frames] that hides padded frames as keys."""
    frames = frame_mask.shape[1]
    bias = (1.0 - frame_mask.to(dtype).unsqueeze(1)) * PADDED_FRAME_BIAS  # [batch, 1, frames]
    bias = bias.expand(-1, frames, -1)  # [batch, frames, frames]
    return bias.repeat_interleave(heads, dim=0)  # [batch * heads, frames, frames]


def encode_frame_sequence(frame_features: torch.Tensor, frame_mask: torch.Tensor,
                          position_embeddings: nn.Embedding, transformer: Transformer) -> torch.Tensor:
    """Add frame positions, run the temporal transformer and add the input back.

    frame_features: [batch, frames, width]; returns [batch, frames, width].
    """
    frames = frame_features.shape[1]
    positions = torch.arange(frames, device=frame_features.device)
    x = frame_features + position_embeddings(positions).unsqueeze(0)

    mask = frame_attention_mask(frame_mask, transformer.heads, x.dtype)
    x = x.permute(1, 0, 2)  # [frames, batch, width]
    x = transformer(x, mask)
    x = x.permute(1, 0, 2)  # [batch, frames, width]
    return x + frame_features


def init_from_clip_text(clip: CLIP, position_embeddings: nn.Embedding, transformer: Transformer) -> int:
    """Copy CLIP's text positional embedding and its first text blocks into the temporal encoder.

    Returns how many blocks were copied; blocks beyond CLIP's text depth keep their fresh values.
    """
    with torch.no_grad():
        position_embeddings.weight.copy_(clip.positional_embedding[: position_embeddings.num_embeddings])
        copied = min(transformer.layers, clip.transformer.layers)
        for index in range(copied):
            transformer.resblocks[index].load_state_dict(clip.transformer.resblocks[index].state_dict())
    return copied
