"""Rename CLIP state dicts between HuggingFace's `CLIPModel` names and OpenAI's names, both ways.

HuggingFace keeps separate q/k/v projections and stores the output projections as Linear
weights [embed, width]; OpenAI packs q/k/v into `in_proj_*` and stores projections as [width, embed].
"""

from __future__ import annotations

import logging
import re

import torch

from pipeline.models.checkpoints import CheckpointMismatchError

logger = logging.getLogger(__name__)

# Buffers that older `transformers` versions saved beside the weights; they are not parameters.
HF_BUFFER_SUFFIXES = ("embeddings.position_ids",)

# Names of the parts outside the transformer blocks, HuggingFace on the left, OpenAI on the right.
HF_TO_OPENAI_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # HuggingFace's own spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
# Projections stored transposed: HuggingFace Linear weight [embed, width], OpenAI matrix [width, embed].
HF_TO_OPENAI_PROJECTIONS = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}
# Transformer stacks: HuggingFace prefix, OpenAI prefix.
HF_TO_OPENAI_STACKS = {
    "text_model.encoder.layers.": "transformer.resblocks.",
    "vision_model.encoder.layers.": "visual.transformer.resblocks.",
}
# Block parts that differ only in name.
HF_TO_OPENAI_BLOCK_PARTS = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
HF_QKV = ("q_proj", "k_proj", "v_proj")
HF_BLOCK_KEY = re.compile(r"^(?P<index>\d+)\.(?P<part>.+)$")


class ConversionError(CheckpointMismatchError):
    """A CLIP state dict that cannot be renamed between the two layouts."""


def hf_to_openai(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename the HuggingFace CLIP entries under `prefix` to OpenAI's names; other entries pass through.

    Raises ConversionError when a block lacks one of its q/k/v projections, and for any CLIP entry
    without an OpenAI counterpart.
    """
    converted: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}  # OpenAI in_proj name -> {"q_proj": ..., ...}

    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            converted[key] = tensor
            continue
        name = key[len(prefix):]

        if name.endswith(HF_BUFFER_SUFFIXES):
            continue
        if name in HF_TO_OPENAI_NAMES:
            converted[prefix + HF_TO_OPENAI_NAMES[name]] = tensor
            continue
        if name in HF_TO_OPENAI_PROJECTIONS:
            converted[prefix + HF_TO_OPENAI_PROJECTIONS[name]] = tensor.t().contiguous()
            continue

        stack = next((hf for hf in HF_TO_OPENAI_STACKS if name.startswith(hf)), None)
        match = HF_BLOCK_KEY.match(name[len(stack):]) if stack else None
        if match is None:
            raise ConversionError(
                f"cannot rename '{key}' to OpenAI's layout: it is not a ViT CLIPModel parameter of HuggingFace's; "
                "pass a checkpoint whose CLIP is a HuggingFace ViT CLIPModel"
            )
        block = prefix + HF_TO_OPENAI_STACKS[stack] + match["index"] + "."
        part = match["part"]

        projection = next((qkv for qkv in HF_QKV if part.startswith(f"self_attn.{qkv}.")), None)
        if projection is not None:
            kind = part.rsplit(".", 1)[1]  # "weight" or "bias"
            packed.setdefault(f"{block}attn.in_proj_{kind}", {})[projection] = tensor
            continue
        renamed = next((part.replace(hf, openai, 1) for hf, openai in HF_TO_OPENAI_BLOCK_PARTS.items()
                        if part.startswith(hf)), None)
        if renamed is None:
            raise ConversionError(
                f"cannot rename '{key}' to OpenAI's layout: it is not a ViT CLIPModel parameter of HuggingFace's; "
                "pass a checkpoint whose CLIP is a HuggingFace ViT CLIPModel"
            )
        converted[block + renamed] = tensor

    for name, parts in packed.items():
        missing = [qkv for qkv in HF_QKV if qkv not in parts]
        if missing:
            raise ConversionError(
                f"cannot build '{name}' because the checkpoint lacks its {', '.join(missing)} tensors; "
                "pass a complete checkpoint"
            )
        converted[name] = torch.cat([parts[qkv] for qkv in HF_QKV], dim=0)  # [3 * width, ...]
    return converted


def openai_to_hf(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename the OpenAI CLIP entries under `prefix` to HuggingFace's `CLIPModel` names; others pass through."""
    names = {openai: hf for hf, openai in HF_TO_OPENAI_NAMES.items()}
    projections = {openai: hf for hf, openai in HF_TO_OPENAI_PROJECTIONS.items()}
    stacks = {openai: hf for hf, openai in HF_TO_OPENAI_STACKS.items()}
    block_parts = {openai: hf for hf, openai in HF_TO_OPENAI_BLOCK_PARTS.items()}
    converted: dict[str, torch.Tensor] = {}

    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            converted[key] = tensor
            continue
        name = key[len(prefix):]

        if name in names:
            converted[prefix + names[name]] = tensor
            continue
        if name in projections:
            converted[prefix + projections[name]] = tensor.t().contiguous()
            continue

        stack = next((openai for openai in stacks if name.startswith(openai)), None)
        match = HF_BLOCK_KEY.match(name[len(stack):]) if stack else None
        if match is None:
            raise ConversionError(
                f"cannot rename '{key}' to HuggingFace's layout: it is not a ViT CLIP parameter of OpenAI's"
            )
        block = prefix + stacks[stack] + match["index"] + "."
        part = match["part"]

        if part.startswith("attn.in_proj_"):
            kind = part.rsplit("_", 1)[1]  # "weight" or "bias"
            for qkv, chunk in zip(HF_QKV, tensor.chunk(len(HF_QKV), dim=0)):
                converted[f"{block}self_attn.{qkv}.{kind}"] = chunk.contiguous()
            continue
        renamed = next(
            (part.replace(openai, hf, 1) for openai, hf in block_parts.items() if part.startswith(openai)), None
        )
        if renamed is None:
            raise ConversionError(
                f"cannot rename '{key}' to HuggingFace's layout: it is not a ViT CLIP parameter of OpenAI's"
            )
        converted[block + renamed] = tensor
    return converted
