"""Teachers: registry, checkpoint loading, the encode/score split, and each similarity head in float64."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.checkpoints import CheckpointMismatchError, CheckpointNotFoundError
from pipeline.models.clip import CLIP_PRESETS
from pipeline.models.preprocess import normalize_frames
from pipeline.models.teachers import (
    TEACHER_CLASSES,
    canonical_teacher_name,
    load_teacher,
    save_tiny_teacher,
)
from pipeline.models.teachers.base import concatenate_items, select_items
from pipeline.models.teachers.clip4clip import CLIP4ClipConfig, CLIP4ClipTeacher
from pipeline.models.teachers.hf_clip import hf_to_openai, openai_to_hf
from pipeline.models.teachers.tiny import build_tiny_teacher
from pipeline.models.teachers.token_selection import perturbed_top_k
from pipeline.models.teachers.ts2net import TS2NetConfig, TS2NetTeacher, shift_patches
from pipeline.text.tokenizer import tokenize_captions

PARITY_DIR = Path(__file__).parent / "fixtures" / "parity"
DEMO_ANNOTATIONS = Path(__file__).parents[1] / "pipeline" / "demo_data" / "MSRVTT_data.json"
TINY_CLIP = CLIP_PRESETS["tiny"]
MAX_WORDS = 16
MAX_FRAMES = 12
BATCH = 6
SEED = 7
TEACHER_NAMES = sorted(TEACHER_CLASSES)
# float32 heads against a float64 re-derivation of the same formulas.
FLOAT64_TOLERANCE = 1e-5
# Items encoded in different groupings go through differently blocked matrix products.
REGROUPING_TOLERANCE = 1e-6
# X-CLIP's attention temperature, restated here so the float64 formulas are independent of the code.
XCLIP_TEMPERATURE = 0.01


@functools.lru_cache(maxsize=1)
def real_batch() -> dict[str, torch.Tensor]:
    """Six real clips (12 frames, some padded) with one of their real captions each."""
    clips = np.load(PARITY_DIR / "frames_mini_msrvtt.npz")
    video_ids = [str(video_id) for video_id in clips["video_ids"][:BATCH]]
    sentences = json.loads(DEMO_ANNOTATIONS.read_text())["sentences"]
    caption_of = {}
    for sentence in sentences:
        caption_of.setdefault(sentence["video_id"], sentence["caption"])
    tokens = tokenize_captions([caption_of[video_id] for video_id in video_ids], MAX_WORDS)
    return {
        "input_ids": torch.from_numpy(tokens.input_ids).long(),
        "attention_mask": torch.from_numpy(tokens.attention_mask),
        "frames": normalize_frames(torch.from_numpy(clips["frames_uint8"][:BATCH])),
        "frame_mask": torch.from_numpy(clips["frame_mask"][:BATCH]).bool(),
    }


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return real_batch()


@functools.lru_cache(maxsize=None)
def tiny_teacher(name: str):
    """One random teacher per name for the whole module; tests only read it."""
    return build_tiny_teacher(TEACHER_CLASSES[name], TINY_CLIP, MAX_WORDS, MAX_FRAMES, SEED)


def encode(teacher, batch):
    with torch.no_grad():
        texts = teacher.encode_texts(batch["input_ids"], batch["attention_mask"])
        videos = teacher.encode_videos(batch["frames"], batch["frame_mask"])
    return texts, videos


@functools.lru_cache(maxsize=None)
def encoded(name: str):
    """The tiny teacher's encoded texts and videos of the real batch; tests only read them."""
    return encode(tiny_teacher(name), real_batch())


@functools.lru_cache(maxsize=None)
def online_outputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny teacher's forward on the real batch: logits and frame targets."""
    with torch.no_grad():
        return tiny_teacher(name)(**real_batch())


def as_float64(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.double() for name, tensor in features.items()}


# Registry and loading.

@pytest.mark.parametrize("spelling, expected", [
    ("XCLIP", "xclip"), ("TS2Net", "ts2net"), ("XPool", "xpool"), ("CLIP4Clip", "clip4clip"),
    ("xclip", "xclip"), ("X-CLIP", "xclip"),
])
def test_canonical_name_accepts_teachclip_spelling(spelling, expected):
    assert canonical_teacher_name(spelling) == expected


def test_unknown_teacher_lists_known_names():
    with pytest.raises(ValueError) as error:
        canonical_teacher_name("ViCLIP")
    for name in TEACHER_CLASSES:
        assert name in str(error.value)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_tiny_checkpoint_round_trip(name, batch, tmp_path):
    built_logits, built_frames = online_outputs(name)
    path = save_tiny_teacher(name, tmp_path / f"{name}.bin", TINY_CLIP, MAX_WORDS, MAX_FRAMES, SEED)
    loaded = load_teacher(name, path)

    with torch.no_grad():
        loaded_logits, loaded_frames = loaded(**batch)
    assert torch.equal(built_logits, loaded_logits)
    assert torch.equal(built_frames, loaded_frames)


def test_student_checkpoint_rejected_as_teacher():
    with pytest.raises(CheckpointMismatchError, match="student"):
        load_teacher("XCLIP", PARITY_DIR / "teachclip_student.bin")


def test_other_teacher_checkpoint_rejected():
    with pytest.raises(CheckpointMismatchError, match="xclip"):
        load_teacher("CLIP4Clip", PARITY_DIR / "xclip.bin")


def test_missing_checkpoint_names_path_and_source(tmp_path):
    path = tmp_path / "msrvtt-7k_xclip_model.bin"
    with pytest.raises(CheckpointNotFoundError) as error:
        load_teacher("xclip", path)
    assert str(path) in str(error.value)
    assert "X-CLIP release" in str(error.value)


def test_seqlstm_checkpoint_rejected(tmp_path):
    state_dict = tiny_teacher("clip4clip").release_state_dict()
    state_dict["lstm_visual.weight_ih_l0"] = torch.zeros(4, 4)
    path = tmp_path / "clip4clip_lstm.bin"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointMismatchError, match="seqLSTM"):
        load_teacher("clip4clip", path)


def test_reference_fp16_casts_only_clip(tmp_path, batch):
    path = save_tiny_teacher("xclip", tmp_path / "xclip.bin", TINY_CLIP, MAX_WORDS, MAX_FRAMES, SEED)
    fp32 = load_teacher("xclip", path)
    fp16 = load_teacher("xclip", path, precision="reference_fp16")
    # float16 convolution is slow on CPU, so two videos suffice here.
    batch = {key: value[:2] for key, value in batch.items()}

    assert fp16.clip.visual.conv1.weight.dtype == torch.float16
    assert fp16.transformerClip.resblocks[0].attn.in_proj_weight.dtype == torch.float32
    assert fp16.describe()["config"]["precision"] == "reference_fp16"
    with torch.no_grad():
        logits16, frames16 = fp16(**batch)
        logits32, frames32 = fp32(**batch)
    assert logits16.dtype == torch.float32
    torch.testing.assert_close(logits16, logits32, rtol=0, atol=1e-2)
    torch.testing.assert_close(frames16, frames32, rtol=0, atol=1e-2)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_describe_is_json(name):
    description = tiny_teacher(name).describe()
    assert json.loads(json.dumps(description))["name"] == name


# The encode / score split that the precompute stage relies on.

@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_forward_equals_batch_targets(name):
    teacher = tiny_teacher(name)
    texts, videos = encoded(name)
    logits, frame_targets = online_outputs(name)
    with torch.no_grad():
        batch_logits, batch_frame_targets = teacher.batch_targets(texts, videos)
    assert torch.equal(logits, batch_logits)
    assert torch.equal(frame_targets, batch_frame_targets)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_separately_encoded_items_match_forward(name, batch):
    teacher = tiny_teacher(name)
    logits, frame_targets = online_outputs(name)
    with torch.no_grad():
        texts = concatenate_items([
            teacher.encode_texts(batch["input_ids"][i:i + 1], batch["attention_mask"][i:i + 1]) for i in range(BATCH)
        ])
        videos = concatenate_items([
            teacher.encode_videos(batch["frames"][i:i + 4], batch["frame_mask"][i:i + 4]) for i in range(0, BATCH, 4)
        ])
        separate_logits, separate_frame_targets = teacher.batch_targets(texts, videos)
    torch.testing.assert_close(separate_logits, logits, rtol=0, atol=REGROUPING_TOLERANCE)
    torch.testing.assert_close(separate_frame_targets, frame_targets, rtol=0, atol=REGROUPING_TOLERANCE)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_selected_items_match_forward_on_subset(name, batch):
    teacher = tiny_teacher(name)
    texts, videos = encoded(teacher.name)
    subset = torch.tensor([4, 1, 3])
    with torch.no_grad():
        logits, frame_targets = teacher(**{key: value[subset] for key, value in batch.items()})
        subset_logits, subset_frame_targets = teacher.batch_targets(select_items(texts, subset), select_items(videos, subset))
    torch.testing.assert_close(subset_logits, logits, rtol=0, atol=REGROUPING_TOLERANCE)
    torch.testing.assert_close(subset_frame_targets, frame_targets, rtol=0, atol=REGROUPING_TOLERANCE)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_chunked_score_matches_full(name, batch):
    teacher = tiny_teacher(name)
    texts, videos = encoded(teacher.name)
    chunks = [torch.arange(start, min(start + 4, BATCH)) for start in range(0, BATCH, 4)]
    with torch.no_grad():
        full = teacher.score(texts, videos)
        rows = [
            torch.cat([teacher.score(select_items(texts, text_chunk), select_items(videos, video_chunk))
                       for video_chunk in chunks], dim=1)
            for text_chunk in chunks
        ]
    torch.testing.assert_close(torch.cat(rows, dim=0), full, rtol=0, atol=REGROUPING_TOLERANCE)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_frame_targets_are_distributions(name):
    _, frame_targets = online_outputs(name)
    assert frame_targets.shape == (BATCH, MAX_FRAMES)
    assert bool((frame_targets >= 0).all())
    torch.testing.assert_close(frame_targets.sum(dim=1), torch.ones(BATCH), rtol=0, atol=1e-6)


# Each similarity head against a float64 re-derivation on the same encoded features.

def softmax64(scores: torch.Tensor) -> torch.Tensor:
    shifted = scores - scores.max()
    return shifted.exp() / shifted.exp().sum()


def weighted_attention_sum(scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_j scores[j] * (softmax(scores / T) @ weight)[j] for one vector of scores."""
    return (scores * (softmax64(scores / XCLIP_TEMPERATURE) @ weight)).sum()


def xclip_pair_logit(teacher, sentence, words, video, frames) -> torch.Tensor:
    """X-CLIP's logit for one text and one video, written per pair in float64."""
    weights = {name: parameter.detach().double() for name, parameter in teacher.named_parameters()}

    video_sentence = sentence @ weights["global_mat_weight"] @ video
    video_word = weighted_attention_sum(words @ video, weights["word_logit_weight"])
    sentence_frame = weighted_attention_sum(frames @ sentence, weights["frame_logit_weight"])

    fine = (words @ weights["local_mat_weight"]) @ frames.t()  # [words, frames]
    per_frame = torch.stack([weighted_attention_sum(fine[:, f], weights["word_mat_weight"]) for f in range(fine.shape[1])])
    per_word = torch.stack([weighted_attention_sum(fine[w, :], weights["frame_mat_weight"]) for w in range(fine.shape[0])])
    frame_word = (weighted_attention_sum(per_frame, weights["frame_mat_weight2"])
                  + weighted_attention_sum(per_word, weights["word_mat_weight2"])) / 2

    logit_scale = teacher.clip.logit_scale.detach().double().exp()
    return logit_scale * (video_sentence + video_word + sentence_frame + frame_word) / 4


def test_xclip_logits_match_float64(batch):
    teacher = tiny_teacher("xclip")
    texts, videos = encoded(teacher.name)
    with torch.no_grad():
        logits, _ = teacher.batch_targets(texts, videos)
    texts, videos = as_float64(texts), as_float64(videos)

    expected = torch.zeros(BATCH, BATCH, dtype=torch.float64)
    for t in range(BATCH):
        for v in range(BATCH):
            expected[t, v] = xclip_pair_logit(
                teacher, texts["sentence"][t], texts["words"][t], videos["video"][v], videos["frames"][v]
            )
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=FLOAT64_TOLERANCE)


@pytest.mark.parametrize("name", ["xclip", "ts2net", "clip4clip"])
def test_sentence_frame_targets_match_float64(name, batch):
    teacher = tiny_teacher(name)
    texts, videos = encoded(teacher.name)
    with torch.no_grad():
        _, frame_targets = teacher.batch_targets(texts, videos)
    texts, videos = as_float64(texts), as_float64(videos)

    expected = torch.stack([softmax64(videos["frames"][i] @ texts["sentence"][i]) for i in range(BATCH)])
    torch.testing.assert_close(frame_targets.double(), expected, rtol=0, atol=FLOAT64_TOLERANCE)


def test_xclip_uses_padded_word_positions(batch):
    teacher = tiny_teacher("xclip")
    texts, videos = encoded(teacher.name)
    padded = ~batch["attention_mask"][0]
    assert bool(padded.any())

    changed = dict(texts)
    changed["words"] = texts["words"].clone()
    changed["words"][0, padded] = torch.flip(changed["words"][0, padded], dims=[-1])
    with torch.no_grad():
        original = teacher.score(texts, videos)[0]
        perturbed = teacher.score(changed, videos)[0]
    assert not torch.allclose(original, perturbed)


def test_xclip_rejects_other_max_words(batch):
    teacher = tiny_teacher("xclip")
    with pytest.raises(ValueError, match="max_words=16"):
        teacher.encode_texts(batch["input_ids"][:, :8], batch["attention_mask"][:, :8])


def test_clip4clip_meanp_pooling_matches_float64(batch, tmp_path):
    config = CLIP4ClipConfig(clip=TINY_CLIP, sim_header="meanP", temporal_layers=0)
    torch.manual_seed(SEED)
    path = tmp_path / "clip4clip_meanp.bin"
    torch.save(CLIP4ClipTeacher(config).release_state_dict(), path)
    teacher = load_teacher("clip4clip", path)
    assert teacher.config.sim_header == "meanP"

    texts, videos = encode(teacher, batch)
    with torch.no_grad():
        logits, _ = teacher.batch_targets(texts, videos)
    frames, sentences = videos["frames"].double(), texts["sentence"].double()

    pooled = []
    for v in range(BATCH):
        kept = frames[v][batch["frame_mask"][v]]
        mean = kept.mean(dim=0)
        pooled.append(mean / mean.norm())
    expected = teacher.clip.logit_scale.detach().double().exp() * sentences @ torch.stack(pooled).t()
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=FLOAT64_TOLERANCE)


def layer_norm64(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight.double() + norm.bias.double()


def linear64(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.detach().double().t() + layer.bias.detach().double()


def xpool_pair(teacher, text: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X-Pool's logit and frame attention for one text [dim] and one video [frames, dim], in float64."""
    pooling = teacher.pool_frames
    attention = pooling.cross_attn
    with torch.no_grad():
        query = linear64(layer_norm64(text, pooling.layer_norm1), attention.q_proj)
        normed_frames = layer_norm64(frames, pooling.layer_norm1)
        keys = linear64(normed_frames, attention.k_proj)
        values = linear64(normed_frames, attention.v_proj)

        weights = softmax64(keys @ query / query.shape[0] ** 0.5)  # [frames]
        attended = layer_norm64(linear64(weights @ values, attention.out_proj), pooling.layer_norm2)
        pooled = layer_norm64(attended + linear64(attended, pooling.linear_proj), pooling.layer_norm3)

        cosine = (text @ pooled) / (text.norm() * pooled.norm())
        logit = teacher.clip.logit_scale.double().exp() * cosine
    return logit, weights


def test_xpool_head_matches_float64(batch):
    teacher = tiny_teacher("xpool")
    texts, videos = encoded(teacher.name)
    with torch.no_grad():
        logits, frame_targets = teacher.batch_targets(texts, videos)
    texts, videos = as_float64(texts), as_float64(videos)

    expected_logits = torch.zeros(BATCH, BATCH, dtype=torch.float64)
    expected_frames = torch.zeros(BATCH, MAX_FRAMES, dtype=torch.float64)
    for t in range(BATCH):
        for v in range(BATCH):
            logit, weights = xpool_pair(teacher, texts["text"][t], videos["frames"][v])
            expected_logits[t, v] = logit
            if t == v:
                expected_frames[t] = weights
    torch.testing.assert_close(logits.double(), expected_logits, rtol=0, atol=FLOAT64_TOLERANCE)
    torch.testing.assert_close(frame_targets.double(), expected_frames, rtol=0, atol=FLOAT64_TOLERANCE)


def test_xpool_ignores_frame_mask(batch):
    teacher = tiny_teacher("xpool")
    all_frames = dict(batch, frame_mask=torch.ones_like(batch["frame_mask"]))
    logits, frame_targets = online_outputs("xpool")
    with torch.no_grad():
        unmasked_logits, unmasked_frame_targets = teacher(**all_frames)
    assert not bool(batch["frame_mask"].all())
    assert torch.equal(logits, unmasked_logits)
    assert torch.equal(frame_targets, unmasked_frame_targets)


def test_xpool_checkpoint_uses_huggingface_names(tmp_path):
    path = save_tiny_teacher("XPool", tmp_path / "xpool.pth", TINY_CLIP, MAX_WORDS, MAX_FRAMES, SEED)
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {"state_dict", "epoch"}
    state_dict = checkpoint["state_dict"]
    assert "clip.text_model.encoder.layers.0.self_attn.q_proj.weight" in state_dict
    assert "clip.vision_model.pre_layrnorm.weight" in state_dict
    assert "pool_frames.cross_attn.q_proj.weight" in state_dict
    assert not any(key.startswith("clip.visual.") for key in state_dict)


def test_huggingface_names_round_trip():
    checkpoint = torch.load(PARITY_DIR / "xpool.bin", weights_only=True)["state_dict"]
    openai = hf_to_openai(checkpoint, prefix="clip.")
    back = openai_to_hf(openai, prefix="clip.")
    assert sorted(back) == sorted(checkpoint)
    for key, tensor in checkpoint.items():
        assert torch.equal(back[key], tensor), key


def test_huggingface_projections_are_transposed():
    checkpoint = torch.load(PARITY_DIR / "xpool.bin", weights_only=True)["state_dict"]
    openai = hf_to_openai(checkpoint, prefix="clip.")
    assert openai["clip.text_projection"].shape == (64, 512)
    assert torch.equal(openai["clip.visual.proj"], checkpoint["clip.visual_projection.weight"].t())
    packed = openai["clip.transformer.resblocks.1.attn.in_proj_bias"]
    assert torch.equal(packed[64:128], checkpoint["clip.text_model.encoder.layers.1.self_attn.k_proj.bias"])


def test_xpool_position_ids_buffer_skipped(tmp_path, batch):
    path = save_tiny_teacher("xpool", tmp_path / "xpool.pth", TINY_CLIP, MAX_WORDS, MAX_FRAMES, SEED)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["clip.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    torch.save(checkpoint, path)

    teacher = load_teacher("xpool", path)
    with torch.no_grad():
        logits, _ = teacher(**batch)
    assert torch.equal(logits, online_outputs("xpool")[0])


def test_ts2net_logits_match_float64(batch):
    teacher = tiny_teacher("ts2net")
    texts, videos = encoded("ts2net")
    with torch.no_grad():
        logits, _ = teacher.batch_targets(texts, videos)
    sentences, frames = texts["sentence"].double(), videos["frames"].double()
    logit_scale = teacher.clip.logit_scale.detach().double().exp()

    expected = torch.zeros(BATCH, BATCH, dtype=torch.float64)
    for t in range(BATCH):
        for v in range(BATCH):
            mask = videos["frame_mask"][v]
            cosine = frames[v] @ sentences[t]  # [frames]
            masked = torch.where(mask, cosine, torch.zeros_like(cosine))
            logits_over_frames = torch.where(mask, 4 * masked / masked.norm(), torch.full_like(cosine, -1e18))
            expected[t, v] = logit_scale * (softmax64(logits_over_frames) * cosine).sum()
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=FLOAT64_TOLERANCE)


def test_ts2net_similarity_mask_is_tiled(batch):
    """TS2-Net tiles the frame mask over its 1 + 3 tokens per frame, so frame f is masked like frame 4f mod 12."""
    _, videos = encoded("ts2net")
    frame_mask = batch["frame_mask"]
    for v in range(BATCH):
        expected = [bool(frame_mask[v, (4 * f) % MAX_FRAMES]) for f in range(MAX_FRAMES)]
        assert videos["frame_mask"][v].tolist() == expected


def test_ts2net_mask_for_five_frames():
    teacher = tiny_teacher("ts2net")
    kept = torch.randn(1, MAX_FRAMES, 4, TINY_CLIP.embed_dim)
    frame_mask = torch.tensor([[True] * 5 + [False] * 7])
    with torch.no_grad():
        _, similarity_mask = teacher.frame_states(kept, frame_mask)
    assert similarity_mask.tolist() == [[True, True, False] * 4]


def test_patch_shift_moves_hand_picked_tokens():
    frames, length, width = 3, 14, 2  # fold = 14 // 7 = 2
    values = torch.arange(frames * length, dtype=torch.float32).reshape(frames, length, 1).expand(-1, -1, width)
    tokens = values.permute(1, 0, 2)  # [tokens, frames, width], one video
    shifted = shift_patches(tokens, frames).permute(1, 0, 2)  # [frames, tokens, width]

    from_previous = {1, 3, 5, 7, 9, 11, 13}
    from_next = {4, 6, 8, 10, 12}
    for f in range(frames):
        for p in range(length):
            source = f
            if p in from_next and f < frames - 1:
                source = f + 1
            elif p in from_previous and f > 0:
                source = f - 1
            assert shifted[f, p, 0].item() == source * length + p, (f, p)


def test_ts2net_shifted_checkpoint_round_trip(batch, tmp_path):
    config = TS2NetConfig(clip=TINY_CLIP, temporal_layers=2, shift_layers=(1,))
    torch.manual_seed(SEED)
    teacher = TS2NetTeacher(config).eval()
    path = tmp_path / "ts2net_shift.bin"
    torch.save(teacher.release_state_dict(), path)
    state_dict = torch.load(path, weights_only=True)
    assert "clip.visual.transformer.resblocks.1.attn.net.in_proj_weight" in state_dict
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" in state_dict

    loaded = load_teacher("TS2Net", path)
    assert loaded.config.shift_layers == (1,)
    with torch.no_grad():
        expected = teacher(**batch)
        logits, frame_targets = loaded(**batch)
    assert torch.equal(logits, expected[0])
    assert torch.equal(frame_targets, expected[1])


def test_ts2net_shift_changes_outputs(batch):
    plain = tiny_teacher("ts2net")
    config = TS2NetConfig(**{**plain.config.to_dict(), "clip": TINY_CLIP, "shift_layers": (1,)})
    shifted = TS2NetTeacher(config).eval()
    shifted.load_release_state_dict(plain.state_dict(), "the tiny TS2-Net")
    with torch.no_grad():
        shifted_logits, _ = shifted(**batch)
    assert not torch.allclose(shifted_logits, online_outputs("ts2net")[0], atol=1e-4)


def test_ts2net_fp16_keeps_shifted_norms_float32():
    config = TS2NetConfig(clip=TINY_CLIP, temporal_layers=2, shift_layers=(1,), precision="reference_fp16")
    block = TS2NetTeacher(config).clip.visual.transformer.resblocks[1]
    assert block.attn.in_proj_weight.dtype == torch.float16
    assert block.ln_1.weight.dtype == torch.float32


def test_perturbed_top_k_counts_noisy_choices():
    generator = torch.Generator().manual_seed(SEED)
    scores = torch.tensor([[0.30, 0.28, -0.5, 0.29, 0.0], [0.9, -0.9, 0.1, 0.2, 0.15]])
    noise = torch.randn(2, 50, 5, generator=generator)
    sigma = 0.05

    indicators = perturbed_top_k(scores, 2, noise, sigma)

    expected = torch.zeros(2, 2, 5)
    for row in range(2):
        for sample in range(50):
            noisy = (scores[row] + sigma * noise[row, sample]).tolist()
            best = sorted(sorted(range(5), key=lambda item: -noisy[item])[:2])
            for slot, item in enumerate(best):
                expected[row, slot, item] += 1 / 50
    torch.testing.assert_close(indicators, expected, rtol=0, atol=1e-6)


def test_ts2net_selection_seed_changes_frames(batch):
    teacher = tiny_teacher("ts2net")
    texts, videos = encoded("ts2net")
    with torch.no_grad():
        reseeded = teacher.encode_videos(batch["frames"], batch["frame_mask"], selection_seed=SEED + 1)
    assert not torch.equal(reseeded["frames"], videos["frames"])
