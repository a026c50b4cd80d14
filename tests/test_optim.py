"""BertAdam against a float64 hand formula, its schedule, and TeachCLIP's parameter groups."""

import math

import pytest
import torch
from torch import nn

from pipeline.optim import (
    BertAdam,
    build_optimizer,
    build_param_groups,
    warmup_cosine,
)

LR = 1e-2
WEIGHT_DECAY = 0.2
BETA1, BETA2, EPS = 0.9, 0.98, 1e-6


def hand_bertadam_steps(param, grads, lr, warmup, t_total, weight_decay, max_grad_norm):
    """BertAdam's update written out element by element in float64."""
    p = [float(v) for v in param]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for step, grad in enumerate(grads):
        g = [float(x) for x in grad]
        norm = math.sqrt(sum(x * x for x in g))
        scale = min(1.0, max_grad_norm / (norm + 1e-6))
        g = [x * scale for x in g]

        progress = step / t_total
        factor = progress / warmup if progress < warmup else 0.5 * (1 + math.cos(math.pi * progress))
        for i in range(len(p)):
            m[i] = BETA1 * m[i] + (1 - BETA1) * g[i]
            v[i] = BETA2 * v[i] + (1 - BETA2) * g[i] * g[i]
            update = m[i] / (math.sqrt(v[i]) + EPS) + weight_decay * p[i]
            p[i] -= lr * factor * update
    return p


def run_bertadam(initial, grads, **kwargs):
    param = nn.Parameter(torch.tensor(initial, dtype=torch.float64))
    optimizer = BertAdam([param], **kwargs)
    for grad in grads:
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
    return param.detach().tolist()


def test_first_step_has_zero_lr_under_warmup():
    initial = [0.5, -1.0, 2.0]
    result = run_bertadam(initial, [[0.1, 0.2, -0.3]], lr=LR, warmup=0.1, t_total=10)
    assert result == initial


def test_steps_match_hand_formula():
    initial = [0.5, -1.0, 2.0, 0.0]
    # The second gradient has norm above 1, so the per-parameter clipping acts. Steps 0-2 are in
    # the warmup (progress below 0.3) and steps 3-4 on the cosine.
    grads = [[0.1, 0.2, -0.3, 0.05], [3.0, -4.0, 1.0, 0.5], [0.01, 0.0, -0.02, 0.3],
             [-0.2, 0.4, 0.1, -0.1], [0.6, 0.3, -0.5, 0.2]]
    expected = hand_bertadam_steps(initial, grads, LR, warmup=0.3, t_total=8, weight_decay=WEIGHT_DECAY,
                                   max_grad_norm=1.0)
    result = run_bertadam(initial, grads, lr=LR, warmup=0.3, t_total=8, weight_decay=WEIGHT_DECAY)
    assert result == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_step_without_clipping_or_decay():
    initial = [1.0, 2.0]
    grads = [[5.0, -5.0], [2.0, 1.0]]
    expected = hand_bertadam_steps(initial, grads, LR, warmup=0.1, t_total=4, weight_decay=0.0,
                                   max_grad_norm=math.inf)
    result = run_bertadam(initial, grads, lr=LR, warmup=0.1, t_total=4, weight_decay=0.0, max_grad_norm=-1)
    assert result == pytest.approx(expected, rel=1e-12)


def test_clipping_leaves_stored_gradient():
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    param.grad = torch.tensor([30.0, 40.0], dtype=torch.float64)
    BertAdam([param], lr=LR).step()
    assert param.grad.tolist() == [30.0, 40.0]


def test_constant_lr_without_total_steps():
    param = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    param.grad = torch.tensor([0.5], dtype=torch.float64)
    BertAdam([param], lr=LR, weight_decay=0.0).step()
    # m = 0.05, sqrt(v) = sqrt(0.02 * 0.25); the full learning rate applies at step 0.
    expected = -LR * 0.05 / (math.sqrt(0.02 * 0.25) + EPS)
    assert param.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("progress, factor", [
    (0.0, 0.0),
    (0.05, 0.5),
    (0.099, 0.99),
    (0.1, 0.5 * (1 + math.cos(0.1 * math.pi))),
    (0.5, 0.5),
    (0.75, 0.5 * (1 - math.sqrt(0.5))),
    (1.0, 0.0),
])
def test_warmup_cosine_values(progress, factor):
    assert warmup_cosine(progress, 0.1) == pytest.approx(factor, abs=1e-15)


def test_scheduled_lrs_follow_step_count():
    param = nn.Parameter(torch.zeros(1))
    optimizer = BertAdam([{"params": [param], "lr": 2.0}], lr=1.0, warmup=0.1, t_total=20)
    assert optimizer.scheduled_lrs() == [0.0]
    for _ in range(10):
        param.grad = torch.ones(1)
        optimizer.step()
    # Ten of twenty steps done: 2 * 0.5 * (1 + cos(pi / 2)).
    assert optimizer.scheduled_lrs() == [pytest.approx(1.0)]


def test_state_dict_resumes_identically():
    torch.manual_seed(0)
    grads = [torch.randn(3) for _ in range(6)]

    straight = nn.Parameter(torch.ones(3))
    straight_optimizer = BertAdam([straight], lr=LR, warmup=0.2, t_total=6)
    for grad in grads:
        straight.grad = grad.clone()
        straight_optimizer.step()

    resumed = nn.Parameter(torch.ones(3))
    first_optimizer = BertAdam([resumed], lr=LR, warmup=0.2, t_total=6)
    for grad in grads[:3]:
        resumed.grad = grad.clone()
        first_optimizer.step()
    second_optimizer = BertAdam([resumed], lr=LR, warmup=0.2, t_total=6)
    second_optimizer.load_state_dict(first_optimizer.state_dict())
    for grad in grads[3:]:
        resumed.grad = grad.clone()
        second_optimizer.step()

    assert torch.equal(resumed.detach(), straight.detach())


class FakeStudent(nn.Module):
    """Parameter names as in TeachCLIP's student: clip.*, transformerClip.*, frameLinear*."""

    def __init__(self):
        super().__init__()
        self.clip = nn.Module()
        self.clip.visual = nn.Module()
        self.clip.visual.conv1 = nn.Conv2d(3, 4, 2, bias=False)
        self.clip.visual.ln_post = nn.LayerNorm(4)
        self.clip.logit_scale = nn.Parameter(torch.ones([]))
        self.transformerClip = nn.Module()
        self.transformerClip.resblocks = nn.ModuleList([nn.Module()])
        self.transformerClip.resblocks[0].ln_1 = nn.LayerNorm(4)
        self.frame_position_embeddings = nn.Embedding(3, 4)
        self.frameLinear = nn.Linear(4, 4)
        self.frameLinear2 = nn.Linear(4, 1)
        self.LayerNorm = nn.LayerNorm(4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def group_of(groups, model, name):
    param = dict(model.named_parameters())[name]
    owners = [group for group in groups if any(p is param for p in group["params"])]
    assert len(owners) <= 1
    return owners[0] if owners else None


@pytest.mark.parametrize("name, group_name, lr, weight_decay", [
    ("clip.visual.conv1.weight", "clip_decay", 1e-7, 0.2),
    ("clip.logit_scale", "clip_decay", 1e-7, 0.2),
    ("clip.visual.ln_post.bias", "clip_no_decay", 1e-7, 0.0),
    # CLIP-style LayerNorms are named ln_*, which the no-decay patterns do not match.
    ("clip.visual.ln_post.weight", "clip_decay", 1e-7, 0.2),
    ("transformerClip.resblocks.0.ln_1.weight", "other_decay", 1e-4, 0.2),
    ("transformerClip.resblocks.0.ln_1.bias", "other_no_decay", 1e-4, 0.0),
    ("frame_position_embeddings.weight", "other_decay", 1e-4, 0.2),
    ("LayerNorm.weight", "other_no_decay", 1e-4, 0.0),
    ("frameLinear.weight", "afa_decay", 1e-3, 0.2),
    ("frameLinear.bias", "afa_no_decay", 1e-3, 0.0),
    ("frameLinear2.weight", "afa_decay", 1e-3, 0.2),
    ("frameLinear2.bias", "afa_no_decay", 1e-3, 0.0),
])
def test_parameter_lands_in_group(name, group_name, lr, weight_decay):
    model = FakeStudent()
    groups, _ = build_param_groups(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    group = group_of(groups, model, name)
    assert group["name"] == group_name
    assert group["lr"] == pytest.approx(lr, rel=1e-12)
    assert group["weight_decay"] == weight_decay


def test_frozen_parameters_left_out():
    model = FakeStudent()
    groups, summaries = build_param_groups(model, lr=1e-4)
    assert group_of(groups, model, "frozen.weight") is None
    assert sum(s.tensors for s in summaries) == len([p for p in model.parameters() if p.requires_grad])


def test_summary_counts_elements():
    model = FakeStudent()
    _, summaries = build_param_groups(model, lr=1e-4)
    afa_decay = next(s for s in summaries if s.name == "afa_decay")
    assert afa_decay.tensors == 2
    assert afa_decay.elements == 4 * 4 + 4


def test_adamw_option_uses_same_schedule():
    model = FakeStudent()
    optimizer, scheduler, _ = build_optimizer(model, name="adamw", lr=1e-4, warmup=0.1, t_total=20)
    assert isinstance(optimizer, torch.optim.AdamW)
    base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for step in range(20):
        factor = warmup_cosine(step / 20, 0.1)
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            assert group["lr"] == pytest.approx(base_lr * factor, rel=1e-12, abs=1e-20)
        optimizer.step()
        scheduler.step()


def test_bertadam_option_trains_model():
    model = FakeStudent()
    optimizer, scheduler, _ = build_optimizer(model, name="bertadam", lr=1e-2, t_total=-1)
    assert scheduler is None
    before = model.frameLinear.weight.detach().clone()
    model.frameLinear(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(model.frameLinear.weight.detach(), before)


def test_unknown_optimizer_rejected():
    with pytest.raises(ValueError, match="invalid optimizer 'sgd'"):
        build_optimizer(FakeStudent(), name="sgd")
