"""TS2-Net's token selection: a patch scorer and the perturbed top-k that keeps the best patches.

The perturbed top-k (TS2-Net's `PerturbedTopK`) is the mean, over noisy copies of the scores,
of the one-hot top-k choices.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchScorePredictor(nn.Module):
    """Scorer of each token from its own features and those of the first token, in (-1, 1) for patches.

    The layer layout and names (`in_conv`, `out_conv`) are TS2-Net's. The text variant (bias in
    `in_conv`, sigmoid output) exists in the checkpoints but TS2-Net's forward does not use it.
    """

    def __init__(self, width: int, text: bool = False):
        super().__init__()
        hidden = width // 2
        self.in_conv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden, bias=text), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(width, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, 1, bias=False),
            nn.Sigmoid() if text else nn.Tanh(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Score tokens [images, tokens, width] into [images, tokens]; token 0 is each image's class token."""
        local = self.in_conv(tokens)  # [images, tokens, width / 2]
        global_token = local[:, :1].expand_as(local)
        return self.out_conv(torch.cat([local, global_token], dim=-1)).squeeze(-1)


class VisualPromptEncoder(nn.Module):
    """Weights of TS2-Net's visual prompt encoder, kept so its checkpoints load and save unchanged.

    TS2-Net's retrieval forward never calls it, so it has no forward here.
    """

    def __init__(self, prompt_length: int, width: int, patch_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(prompt_length, width))
        self.layer_norm = nn.LayerNorm(width)


def perturbed_top_k(scores: torch.Tensor, k: int, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Compute soft top-k indicators [rows, k, items] of scores [rows, items] under noise [rows, samples, items].

    Entry (r, j, i) is the fraction of noisy samples in which item i is the j-th smallest index
    among the k best items of row r.
    """
    rows, items = scores.shape
    samples = noise.shape[1]
    perturbed = scores.unsqueeze(1) + noise * sigma  # [rows, samples, items]
    chosen = torch.topk(perturbed, k=k, dim=-1, sorted=False).indices
    chosen = torch.sort(chosen, dim=-1).values  # [rows, samples, k]

    counts = torch.zeros(rows, k, items, dtype=scores.dtype, device=scores.device)
    ones = torch.ones(rows, k, samples, dtype=scores.dtype, device=scores.device)
    counts.scatter_add_(2, chosen.permute(0, 2, 1), ones)  # [rows, k, items]
    return counts / samples
