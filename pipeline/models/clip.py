"""CLIP (ViT image tower and text tower) with OpenAI's parameter names.

Modules and parameter names follow OpenAI's released checkpoints, so their state dicts,
and the `clip.*` part of CLIP4Clip, X-CLIP, TS2-Net and TeachCLIP checkpoints, load as they are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

# OpenAI's ViT towers use 64-dimensional attention heads at every size.
HEAD_WIDTH = 64

# Scalar entries of OpenAI's TorchScript archives that are not parameters.
NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a ViT CLIP; every field is read off a checkpoint by `from_state_dict`."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 32
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_width // HEAD_WIDTH)

    @property
    def text_heads(self) -> int:
        return max(1, self.text_width // HEAD_WIDTH)

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.vision_patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], prefix: str = "") -> "CLIPConfig":
        """Read the architecture off a ViT CLIP state dict in OpenAI's layout."""
        def tensor(name: str) -> torch.Tensor:
            key = prefix + name
            if key not in state_dict:
                raise KeyError(
                    f"parameter '{key}' is missing, so this is not a ViT CLIP state dict in OpenAI's layout; "
                    "pass OpenAI's ViT-B-32.pt / ViT-B-16.pt or a checkpoint saved by this tool"
                )
            return state_dict[key]

        conv_weight = tensor("visual.conv1.weight")  # [width, 3, patch, patch]
        vision_layers = len({
            key for key in state_dict
            if key.startswith(prefix + "visual.transformer.resblocks.") and key.endswith(".attn.in_proj_weight")
        })
        text_layers = len({
            key.split(".")[len(prefix.split(".")) + 1]
            for key in state_dict
            if key.startswith(prefix + "transformer.resblocks.")
        })
        grid_size = round((tensor("visual.positional_embedding").shape[0] - 1) ** 0.5)
        patch_size = conv_weight.shape[-1]

        return cls(
            embed_dim=tensor("text_projection").shape[1],
            image_resolution=patch_size * grid_size,
            vision_layers=vision_layers,
            vision_width=conv_weight.shape[0],
            vision_patch_size=patch_size,
            context_length=tensor("positional_embedding").shape[0],
            vocab_size=tensor("token_embedding.weight").shape[0],
            text_width=tensor("ln_final.weight").shape[0],
            text_layers=text_layers,
        )


# Released architectures, so configs can name them instead of listing sizes.
CLIP_PRESETS = {
    "ViT-B/32": CLIPConfig(vision_patch_size=32),
    "ViT-B/16": CLIPConfig(vision_patch_size=16),
    # Small random models for tests and the demo; 64 keeps one attention head per block.
    "tiny": CLIPConfig(
        embed_dim=64, vision_layers=2, vision_width=64, vision_patch_size=32,
        vocab_size=49408, text_width=64, text_layers=4,
    ),
}


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, so float16 weights stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        return super().forward(x.type(torch.float32)).type(input_dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Sigmoid approximation of GELU that CLIP was trained with.
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention, then MLP, each with a residual."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if attn_mask is not None:
            attn_mask = attn_mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """A stack of residual attention blocks over [length, batch, width] inputs."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower; `forward` returns every token, before ln_post and projection."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        width = config.vision_width
        scale = width ** -0.5
        self.input_resolution = config.image_resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.vision_patch_size, stride=config.vision_patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid_size ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Turn images [N, 3, H, W] into the token sequence [N, grid*grid + 1, width] after ln_pre."""
        x = self.conv1(images)  # [N, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1)  # [N, width, grid*grid]
        x = x.permute(0, 2, 1)  # [N, grid*grid, width]

        class_token = self.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([class_token, x], dim=1)  # [N, grid*grid + 1, width]
        x = x + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed_patches(images)
        x = x.permute(1, 0, 2)  # [tokens, N, width]
        x = self.transformer(x)
        return x.permute(1, 0, 2)  # [N, tokens, width]


class CLIP(nn.Module):
    """ViT CLIP with OpenAI's parameter names; text and image towers share no weights."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.context_length = config.context_length
        self.visual = VisionTransformer(config)
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads)
        self.vocab_size = config.vocab_size
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.text_width))
        self.ln_final = LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """Initialise as OpenAI's CLIP does; pretrained weights usually replace these."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

        width, layers = self.transformer.width, self.transformer.layers
        proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Project every output token of images [N, 3, H, W] to [N, tokens, embed_dim]."""
        hidden = self.visual(images.type(self.dtype))
        return self.visual.ln_post(hidden) @ self.visual.proj

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images [N, 3, H, W] as their projected class token [N, embed_dim]."""
        return self.encode_image_tokens(images)[:, 0, :]

    def causal_mask(self, length: int, device: torch.device) -> torch.Tensor:
        """Additive mask [length, length] that hides later tokens from earlier ones."""
        mask = torch.full((length, length), float("-inf"), device=device)
        return mask.triu_(1)

    def encode_text_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Project every token state of input_ids [N, L] to [N, L, embed_dim]."""
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids).type(self.dtype)  # [N, L, width]
        x = x + self.positional_embedding[:length].type(self.dtype)
        x = x.permute(1, 0, 2)  # [L, N, width]
        x = self.transformer(x, self.causal_mask(length, x.device))
        x = x.permute(1, 0, 2)  # [N, L, width]
        return self.ln_final(x).type(self.dtype) @ self.text_projection

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed input_ids [N, L] as the projected state at the end-of-text token [N, embed_dim].

        The end-of-text token has the largest id in CLIP's vocabulary, so its position is the argmax.
        """
        hidden = self.encode_text_tokens(input_ids)
        end_positions = input_ids.argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), end_positions]


def convert_clip_weights_to_fp16(module: nn.Module) -> None:
    """Cast linear, convolution and attention weights and CLIP's projections to float16 in place.

    This is the precision the reference trains and evaluates CLIP in (OpenAI's `convert_weights`);
    LayerNorm weights and embeddings stay float32.
    """
    projection_names = ("text_projection", "proj")

    def cast(layer: nn.Module) -> None:
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            layer.weight.data = layer.weight.data.half()
            if layer.bias is not None:
                layer.bias.data = layer.bias.data.half()
        if isinstance(layer, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                         "in_proj_bias", "bias_k", "bias_v"):
                tensor = getattr(layer, name)
                if tensor is not None:
                    tensor.data = tensor.data.half()
        for name in projection_names:
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                tensor.data = tensor.data.half()

    module.apply(cast)


def strip_non_parameters(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the scalar metadata entries OpenAI's archives carry beside the weights."""
    return {key: value for key, value in state_dict.items() if key not in NON_PARAMETER_KEYS}
