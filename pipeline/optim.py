"""TeachCLIP's optimiser: BERT-style Adam with a warmup-cosine schedule, and its parameter groups.

The update, schedule and groups reproduce `BertAdam` (modules/optimization.py) and
`prep_optimizer` (train.py) from TeachCLIP's code. torch's AdamW is offered as an alternative.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

# TeachCLIP's optimiser settings: BERT's Adam with a second-moment decay of 0.98 instead of
# BERT's 0.999, and weight decay 0.2 on every parameter outside NO_DECAY_PATTERNS.
ADAM_BETAS = (0.9, 0.98)
ADAM_EPS = 1e-6
WEIGHT_DECAY = 0.2
MAX_GRAD_NORM = 1.0

# CLIP's pretrained backbone learns at the base learning rate times this, so it moves little.
CLIP_LR_COEF = 1e-3
# The freshly initialised AFA layers learn at the base learning rate times this.
AFA_LR_MULTIPLIER = 10.0
AFA_PARAMETER_NAMES = ("frameLinear.weight", "frameLinear.bias", "frameLinear2.weight", "frameLinear2.bias")
# A parameter belongs to CLIP when its name contains this.
CLIP_NAME_PART = "clip."
# Parameters whose name contains one of these get no weight decay. CLIP's own LayerNorms are named
# ln_1, ln_2, ln_pre, ln_post and ln_final, so their weights match none of these and are decayed,
# as in TeachCLIP's prep_optimizer.
NO_DECAY_PATTERNS = ("bias", "LayerNorm.bias", "LayerNorm.weight")

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing, and BertAdam clips with it.
_CLIP_NORM_EPS = 1e-6

OPTIMIZER_NAMES = ("bertadam", "adamw")


def warmup_cosine(progress: float, warmup: float) -> float:
    """Return the learning-rate factor at `progress` (fraction of all steps done).

    Linear from 0 while progress < warmup, then 0.5 (1 + cos(pi progress)). The cosine runs over
    the whole of training, not the part after warmup, so the factor drops from 1 to
    0.5 (1 + cos(pi warmup)) when warmup ends (0.976 for warmup 0.1), as in BertAdam.
    """
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(progress: float, warmup: float) -> float:
    """Return the factor that rises linearly over warmup and then stays at 1."""
    if progress < warmup:
        return progress / warmup
    return 1.0


def warmup_linear(progress: float, warmup: float) -> float:
    """Return the factor that rises linearly over warmup and then falls linearly to 0 at the end."""
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_cosine": warmup_cosine,
    "warmup_constant": warmup_constant,
    "warmup_linear": warmup_linear,
}


class BertAdam(torch.optim.Optimizer):
    """Adam as BERT's reference code applies it, with its learning-rate schedule built in.

    For each parameter with a gradient, in order:
    1. clip that parameter's gradient alone to norm `max_grad_norm` (per tensor, not global);
    2. m = b1 m + (1 - b1) g and v = b2 v + (1 - b2) g^2, with no bias correction;
    3. update = m / (sqrt(v) + eps) + weight_decay * p (decay decoupled from the moments);
    4. p -= lr * schedule(step / t_total, warmup) * update, where step counts this parameter's
       earlier updates, starting at 0.

    The first step therefore has learning rate 0 under a warmup schedule. `t_total=-1` keeps the
    learning rate constant. The schedule lives in the optimiser, as in TeachCLIP, because its step
    counter is per parameter. Accelerate's wrapper calls `step` only on real optimiser steps, so
    gradient accumulation and skipped mixed-precision steps leave the schedule where it was.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float, warmup: float = -1.0,
                 t_total: int = -1, schedule: str = "warmup_cosine",
                 betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS,
                 weight_decay: float = WEIGHT_DECAY, max_grad_norm: float = MAX_GRAD_NORM):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}; expected a value >= 0")
        if schedule not in SCHEDULES:
            raise ValueError(f"invalid schedule {schedule!r}; expected one of {tuple(SCHEDULES)}")
        if not (0.0 <= warmup < 1.0 or warmup == -1):
            raise ValueError(f"invalid warmup {warmup}; expected a fraction in [0, 1) or -1 for none")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid betas {betas}; expected both in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps}; expected a value >= 0")
        defaults = dict(lr=lr, schedule=schedule, warmup=warmup, t_total=t_total, betas=betas, eps=eps,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    def scheduled_lrs(self) -> list[float]:
        """Return each group's learning rate for its next step, for logging."""
        lrs = []
        for group in self.param_groups:
            steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state[p]]
            lrs.append(_scheduled_lr(group, steps[0] if steps else 0))
        return lrs

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients; use torch.optim.SparseAdam")

                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)

                grad = param.grad
                if group["max_grad_norm"] > 0:
                    grad = _clip_tensor_norm(grad, group["max_grad_norm"])

                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])

                if group["weight_decay"] > 0.0:
                    update += group["weight_decay"] * param

                scheduled_lr = _scheduled_lr(group, state["step"])
                param.add_(-(scheduled_lr * update))
                state["step"] += 1

        return loss


@dataclass(frozen=True)
class ParamGroupSummary:
    """One parameter group as built: its name, rates and size."""

    name: str
    lr: float
    weight_decay: float
    tensors: int
    elements: int


def build_param_groups(model: nn.Module, lr: float, coef_lr: float = CLIP_LR_COEF,
                       weight_decay: float = WEIGHT_DECAY, afa_lr_multiplier: float = AFA_LR_MULTIPLIER,
                       afa_parameter_names: Sequence[str] = AFA_PARAMETER_NAMES,
                       no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS,
                       ) -> tuple[list[dict], list[ParamGroupSummary]]:
    """Split the trainable parameters into TeachCLIP's six groups.

    The learning rate is lr * afa_lr_multiplier for the AFA layers (a name that equals one of
    `afa_parameter_names` or ends in "." plus one), lr * coef_lr for CLIP (a name containing
    "clip."), and lr for everything else. Each of the three is split into a decayed group
    (weight_decay) and a group without decay (a name containing one of `no_decay_patterns`).
    Parameters with requires_grad False are left out, and so are empty groups. Each group dict
    has a "name" key. Returns the groups for an optimiser and one summary per group.
    """
    groups: dict[str, tuple[float, float, list[torch.Tensor]]] = {}
    for part, part_lr in (("clip", lr * coef_lr), ("other", lr), ("afa", lr * afa_lr_multiplier)):
        groups[f"{part}_decay"] = (part_lr, weight_decay, [])
        groups[f"{part}_no_decay"] = (part_lr, 0.0, [])

    frozen = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            frozen += 1
            continue
        if any(name == afa or name.endswith("." + afa) for afa in afa_parameter_names):
            part = "afa"
        elif CLIP_NAME_PART in name:
            part = "clip"
        else:
            part = "other"
        decay = "no_decay" if any(pattern in name for pattern in no_decay_patterns) else "decay"
        groups[f"{part}_{decay}"][2].append(param)

    param_groups = []
    summaries = []
    for group_name, (group_lr, group_decay, params) in groups.items():
        if not params:
            continue
        param_groups.append({"params": params, "lr": group_lr, "weight_decay": group_decay, "name": group_name})
        summaries.append(ParamGroupSummary(name=group_name, lr=group_lr, weight_decay=group_decay,
                                           tensors=len(params), elements=sum(p.numel() for p in params)))

    if not param_groups:
        raise ValueError("the model has no trainable parameters; check which layers are frozen")
    logger.info("parameter groups: %s; %d frozen tensors left out", "; ".join(
        f"{s.name} lr={s.lr:g} weight_decay={s.weight_decay:g} tensors={s.tensors} elements={s.elements}"
        for s in summaries), frozen)
    return param_groups, summaries


def build_optimizer(model: nn.Module, name: str = "bertadam", lr: float = 1e-4, coef_lr: float = CLIP_LR_COEF,
                    weight_decay: float = WEIGHT_DECAY, warmup: float = 0.1, t_total: int = -1,
                    max_grad_norm: float = MAX_GRAD_NORM,
                    ) -> tuple[torch.optim.Optimizer, LambdaLR | None, list[ParamGroupSummary]]:
    """Build the optimiser over TeachCLIP's parameter groups, and a scheduler where one is needed.

    "bertadam" schedules inside the optimiser and clips each parameter's gradient (scheduler None).
    "adamw" is torch's AdamW (with bias correction, no clipping inside) with the same betas and eps,
    and a LambdaLR giving the same warmup-cosine factors. Call the scheduler's `step` after each
    optimiser step. `t_total` is the number of optimiser steps; -1 keeps the learning rate constant.
    """
    param_groups, summaries = build_param_groups(model, lr, coef_lr=coef_lr, weight_decay=weight_decay)

    if name == "bertadam":
        optimizer = BertAdam(param_groups, lr=lr, warmup=warmup, t_total=t_total, schedule="warmup_cosine",
                             weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        return optimizer, None, summaries

    if name == "adamw":
        optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                      weight_decay=weight_decay)
        scheduler = LambdaLR(optimizer, lambda step: _schedule_factor("warmup_cosine", step, t_total, warmup))
        return optimizer, scheduler, summaries

    raise ValueError(f"invalid optimizer {name!r}; expected one of {OPTIMIZER_NAMES}")


def _schedule_factor(schedule: str, step: int, t_total: int, warmup: float) -> float:
    if t_total == -1:
        return 1.0
    return SCHEDULES[schedule](step / t_total, warmup)


def _scheduled_lr(group: dict, step: int) -> float:
    return group["lr"] * _schedule_factor(group["schedule"], step, group["t_total"], group["warmup"])


def _clip_tensor_norm(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale one gradient to norm at most max_norm, with clip_grad_norm_'s arithmetic."""
    norm = torch.linalg.vector_norm(grad, 2)
    coef = torch.clamp(max_norm / (norm + _CLIP_NORM_EPS), max=1.0)
    return grad * coef
