"""The student against the reference's parity fixtures, and its loading paths."""

import numpy as np
import pytest
import torch

from pipeline.models.checkpoints import CheckpointMismatchError, CheckpointNotFoundError, read_state_dict
from pipeline.models.clip import CLIP, CLIP_PRESETS, CLIPConfig, strip_non_parameters
from pipeline.models.factory import freeze_clip_layers, load_student
from pipeline.models.preprocess import normalize_frames
from pipeline.models.student import StudentConfig, TeachCLIPStudent

PARITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def parity_inputs(request):
    from conftest import PARITY_DIR

    inputs = np.load(PARITY_DIR / "inputs.npz")
    outputs = np.load(PARITY_DIR / "outputs.npz")
    return inputs, outputs


def test_student_reproduces_reference_outputs(parity_dir, parity_inputs):
    inputs, outputs = parity_inputs
    model = load_student(parity_dir / "teachclip_student.bin").train()
    frames = normalize_frames(torch.from_numpy(inputs["frames_uint8"]))

    with torch.no_grad():
        logits, frame_weights = model(torch.from_numpy(inputs["input_ids"]), frames,
                                      torch.from_numpy(inputs["frame_mask"]))

    assert np.abs(logits.numpy() - outputs["teachclip_student_logits"]).max() < PARITY_TOLERANCE
    assert np.abs(frame_weights.numpy() - outputs["teachclip_student_frame"]).max() < PARITY_TOLERANCE


def test_init_from_clip_matches_reference(parity_dir):
    clip_state = strip_non_parameters(read_state_dict(parity_dir / "clip_openai_layout.pt", "clip"))
    model = TeachCLIPStudent(StudentConfig(clip=CLIPConfig.from_state_dict(clip_state), temporal_layers=4))
    model.init_from_clip(clip_state)
    reference = read_state_dict(parity_dir / "teachclip_student_init.bin", "student")
    own = model.state_dict()

    copied = [name for name in reference if not name.startswith(("frameLinear", "frameLinear2"))]
    assert sorted(own) == sorted(reference)
    for name in copied:
        assert torch.equal(own[name], reference[name]), name


def test_encode_video_is_afa_pooled_vector(parity_dir, parity_inputs):
    inputs, _ = parity_inputs
    model = load_student(parity_dir / "teachclip_student.bin").eval()
    frames = normalize_frames(torch.from_numpy(inputs["frames_uint8"]))
    frame_mask = torch.from_numpy(inputs["frame_mask"])

    with torch.no_grad():
        vectors = model.encode_video(frames, frame_mask).double()
        states = model.video_states(model.encode_frames(frames), frame_mask)
    # Independent float64 pooling: unit frame states weighted by softmax(raw / 0.1), then unit length.
    unit_states = states.frame_states.double() / states.frame_states.double().norm(dim=-1, keepdim=True)
    weights = torch.softmax(states.frame_logits.double() / 0.1, dim=1)
    expected = (unit_states * weights.unsqueeze(-1)).sum(1)
    expected = expected / expected.norm(dim=-1, keepdim=True)

    assert torch.allclose(vectors, expected, atol=1e-6)


def test_torchscript_clip_archive_loads(tmp_path):
    torch.manual_seed(0)
    config = CLIPConfig(embed_dim=64, vision_layers=1, vision_width=64, vocab_size=1000, text_width=64, text_layers=1)
    clip = CLIP(config).eval()
    images = torch.randn(1, 3, 224, 224)
    path = tmp_path / "ViT-tiny.pt"
    # OpenAI's released .pt files are TorchScript archives; trace_module writes the same kind of file.
    torch.jit.save(torch.jit.trace_module(clip, {"encode_image": images}), str(path))

    state = strip_non_parameters(read_state_dict(path, "clip"))

    assert CLIPConfig.from_state_dict(state) == config
    for name, tensor in clip.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_missing_checkpoint_names_path_and_source(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    with pytest.raises(CheckpointNotFoundError, match="ViT-B-32.pt") as error:
        read_state_dict(path, "clip")
    assert "OpenAI" in str(error.value)
    assert "nothing is downloaded" in str(error.value)


def test_teacher_checkpoint_rejected_as_student(parity_dir):
    with pytest.raises(CheckpointMismatchError, match="looks like a checkpoint of model 'xclip'"):
        load_student(parity_dir / "xclip.bin")


def test_student_widths_must_match():
    clip = CLIPConfig(embed_dim=32, vision_width=64, text_width=64, text_layers=1, vision_layers=1)
    with pytest.raises(ValueError, match="embed_dim"):
        TeachCLIPStudent(StudentConfig(clip=clip, temporal_layers=1))


def test_freeze_layer_zero_freezes_embeddings_only():
    model = TeachCLIPStudent(StudentConfig(clip=CLIP_PRESETS["tiny"], temporal_layers=1))
    frozen = set(freeze_clip_layers(model, 0))

    assert "clip.token_embedding.weight" in frozen
    assert "clip.visual.conv1.weight" in frozen
    assert "clip.visual.ln_pre.weight" in frozen
    assert not any(".resblocks." in name for name in frozen)
    assert "clip.visual.proj" not in frozen
    assert "clip.logit_scale" not in frozen


def test_freeze_layer_minus_one_freezes_nothing():
    model = TeachCLIPStudent(StudentConfig(clip=CLIP_PRESETS["tiny"], temporal_layers=1))
    assert freeze_clip_layers(model, -1) == []
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_reference_fp16_casts_clip_only(parity_dir, parity_inputs):
    inputs, outputs = parity_inputs
    model = load_student(parity_dir / "teachclip_student.bin", precision="reference_fp16").train()

    assert model.clip.visual.conv1.weight.dtype == torch.float16
    assert model.clip.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert model.clip.visual.proj.dtype == torch.float16
    assert model.clip.ln_final.weight.dtype == torch.float32
    assert model.frameLinear.weight.dtype == torch.float32
    assert model.transformerClip.resblocks[0].attn.in_proj_weight.dtype == torch.float32

    frames = normalize_frames(torch.from_numpy(inputs["frames_uint8"]))
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(inputs["input_ids"]), frames, torch.from_numpy(inputs["frame_mask"]))
    # float16 weights keep about 3 significant digits; these logits are below 1 in magnitude.
    assert np.abs(logits.numpy() - outputs["teachclip_student_logits"]).max() < 1e-2
