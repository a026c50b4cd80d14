"""TeachCLIP's training losses: ground truth, coarse (logit) and fine (frame) distillation.

The formulas reproduce `train_epoch` in TeachCLIP's train.py (the reference below), including its
unusual sums and means.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

COARSE_METHODS = ("ce", "pear", "l1")
FINE_METHODS = ("ce", "pear", "l1")

# Total weighting from the reference. Coarse `ce` averages over all B x B entries, which makes it
# B times smaller than a per-row cross-entropy, and the reference scales it by 10.
CE_GROUND_TRUTH_WEIGHT = 1.0
CE_COARSE_WEIGHT = 10.0
CE_FINE_WEIGHT = 1.0
# With a correlation-based (`pear`) or `l1` coarse loss the reference leans on the teachers:
# the contrastive term drops to 0.2 and the frame term doubles.
OTHER_GROUND_TRUTH_WEIGHT = 0.2
OTHER_COARSE_WEIGHT = 1.0
OTHER_FINE_WEIGHT = 2.0

# Transition point of the smooth L1 loss; torch's default, which the reference uses.
SMOOTH_L1_BETA = 1.0

# Sample ids listed in a NonFiniteLossError before the rest are summarised as a count.
_MAX_IDS_IN_MESSAGE = 20


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training."""


@dataclass(frozen=True)
class LossTerms:
    """The weighted total and its three unweighted parts for one training step (scalar tensors)."""

    total: torch.Tensor
    ground_truth: torch.Tensor
    coarse: torch.Tensor
    fine: torch.Tensor


def ground_truth_loss(logits: torch.Tensor) -> torch.Tensor:
    """Return the symmetric InfoNCE loss of a [texts, videos] logit matrix.

    The matching pairs lie on the diagonal. The loss is the mean of the row (text-to-video) and the
    column (video-to-text) cross-entropies.
    """
    _check_square(logits, "logits")
    targets = torch.arange(logits.shape[0], device=logits.device)
    text_to_video = F.cross_entropy(logits, targets)
    video_to_text = F.cross_entropy(logits.T, targets)
    return (text_to_video + video_to_text) / 2


def coarse_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        method: str) -> torch.Tensor:
    """Return the distance between the student's and one teacher's [B, B] logit matrices.

    - ``ce``: the mean over all B x B entries of -softmax(teacher) * log_softmax(student), row-wise,
      plus the same quantity for the transposed matrices (text-to-video plus video-to-text).
    - ``pear``: 1 - Pearson correlation of softmax(student) and softmax(teacher), averaged over
      rows, plus the same for columns. The Pearson correlation is the cosine of the row-centred
      probability vectors.
    - ``l1``: smooth L1 between the teacher's and the student's logits, averaged over entries.
    """
    _check_square(student_logits, "student_logits")
    _check_same_shape(teacher_logits, student_logits, "teacher_logits", "student_logits")

    if method == "ce":
        rows = _soft_cross_entropy_mean(student_logits, teacher_logits)
        columns = _soft_cross_entropy_mean(student_logits.T, teacher_logits.T)
        return rows + columns

    if method == "pear":
        rows = _row_pearson_distance(student_logits.softmax(-1), teacher_logits.softmax(-1))
        columns = _row_pearson_distance(student_logits.T.softmax(-1), teacher_logits.T.softmax(-1))
        return rows.mean() + columns.mean()

    if method == "l1":
        return F.smooth_l1_loss(teacher_logits, student_logits, beta=SMOOTH_L1_BETA)

    raise ValueError(f"invalid coarse distillation method {method!r}; expected one of {COARSE_METHODS}")


def fine_distill_loss(frame_weights: torch.Tensor, frame_targets: torch.Tensor,
                      method: str) -> torch.Tensor:
    """Return the distance between the student's and one teacher's [B, F] frame distributions.

    Row i is the distribution over the frames of video i for the positive pair (text i, video i).

    - ``ce``: the mean over all B x F entries of -log(student weight) * teacher target.
    - ``pear``: 1 - Pearson correlation of the two rows, averaged over rows.
    - ``l1``: smooth L1 between the two, averaged over entries.
    """
    if frame_weights.dim() != 2:
        raise ValueError(f"frame_weights must be [batch, frames], got shape {tuple(frame_weights.shape)}")
    _check_same_shape(frame_targets, frame_weights, "frame_targets", "frame_weights")

    if method == "ce":
        # NOTE: a student weight that underflows to 0 gives NaN where its target is 0 as well.
        # The reference has no guard either, and assert_finite_terms reports the NaN.
        return (-torch.log(frame_weights) * frame_targets).mean()

    if method == "pear":
        return _row_pearson_distance(frame_weights, frame_targets).mean()

    if method == "l1":
        return F.smooth_l1_loss(frame_weights, frame_targets, beta=SMOOTH_L1_BETA)

    raise ValueError(f"invalid fine distillation method {method!r}; expected one of {FINE_METHODS}")


def total_loss_weights(coarse_method: str) -> tuple[float, float, float]:
    """Return TeachCLIP's (ground truth, coarse, fine) weights for a coarse method."""
    if coarse_method not in COARSE_METHODS:
        raise ValueError(f"invalid coarse distillation method {coarse_method!r}; expected one of {COARSE_METHODS}")
    if coarse_method == "ce":
        return CE_GROUND_TRUTH_WEIGHT, CE_COARSE_WEIGHT, CE_FINE_WEIGHT
    return OTHER_GROUND_TRUTH_WEIGHT, OTHER_COARSE_WEIGHT, OTHER_FINE_WEIGHT


class TeachCLIPLoss(nn.Module):
    """TeachCLIP's per-step loss: ground truth plus coarse and fine distillation from teachers.

    The student's and the teachers' logits are divided by ``beta``, and frame distributions are
    used as given, as in the reference. Each distillation term is averaged over the teachers.
    With no teachers the total is the ground-truth loss alone (weight 1), and the coarse and fine
    terms are zero. That is the contrastive baseline without distillation.
    """

    def __init__(self, coarse_method: str = "pear", fine_method: str = "ce", beta: float = 1.0):
        super().__init__()
        if coarse_method not in COARSE_METHODS:
            raise ValueError(f"invalid coarse_method {coarse_method!r}; expected one of {COARSE_METHODS}")
        if fine_method not in FINE_METHODS:
            raise ValueError(f"invalid fine_method {fine_method!r}; expected one of {FINE_METHODS}")
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.coarse_method = coarse_method
        self.fine_method = fine_method
        self.beta = beta

    def extra_repr(self) -> str:
        return f"coarse_method={self.coarse_method!r}, fine_method={self.fine_method!r}, beta={self.beta}"

    def forward(self, student_logits: torch.Tensor, frame_weights: torch.Tensor,
                teacher_logits: Sequence[torch.Tensor],
                teacher_frame_targets: Sequence[torch.Tensor]) -> LossTerms:
        """Compute the loss terms for one batch.

        student_logits: [B, B] (text rows, video columns); frame_weights: [B, F];
        teacher_logits: one [B, B] per teacher; teacher_frame_targets: one [B, F] per teacher.
        """
        if len(teacher_logits) != len(teacher_frame_targets):
            raise ValueError(f"got logits from {len(teacher_logits)} teachers but frame targets from "
                             f"{len(teacher_frame_targets)}; pass both outputs of every teacher")

        student_logits = student_logits / self.beta
        ground_truth = ground_truth_loss(student_logits)

        if not teacher_logits:
            zero = ground_truth.new_zeros(())
            return LossTerms(total=ground_truth, ground_truth=ground_truth, coarse=zero, fine=zero)

        coarse = _mean_of([
            coarse_distill_loss(student_logits, logits.detach() / self.beta, self.coarse_method)
            for logits in teacher_logits
        ])
        fine = _mean_of([
            fine_distill_loss(frame_weights, targets.detach(), self.fine_method)
            for targets in teacher_frame_targets
        ])

        ground_truth_weight, coarse_weight, fine_weight = total_loss_weights(self.coarse_method)
        total = ground_truth_weight * ground_truth + coarse_weight * coarse + fine_weight * fine
        return LossTerms(total=total, ground_truth=ground_truth, coarse=coarse, fine=fine)


def assert_finite_terms(terms: LossTerms, step: int, sample_ids: Sequence[object]) -> None:
    """Raise NonFiniteLossError naming the step, the batch's samples and each NaN or infinite term."""
    bad_terms = []
    for name in ("total", "ground_truth", "coarse", "fine"):
        value = getattr(terms, name).detach()
        if not bool(torch.isfinite(value).all()):
            bad_terms.append(f"{name}={float(value):g}")
    if not bad_terms:
        return

    shown_ids = ", ".join(str(sample_id) for sample_id in sample_ids[:_MAX_IDS_IN_MESSAGE])
    if len(sample_ids) > _MAX_IDS_IN_MESSAGE:
        shown_ids += f", ... ({len(sample_ids)} samples)"
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {', '.join(bad_terms)}; batch samples [{shown_ids}]. "
        "Check these samples' teacher targets for NaN or all-zero rows, or lower the learning rate."
    )


def _soft_cross_entropy_mean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    # Mean over all entries (not the sum over each row), as the reference computes it.
    log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_probs = teacher_logits.softmax(dim=-1)
    return (-teacher_probs * log_probs).mean()


def _row_pearson_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return 1 - Pearson correlation of each row pair, shape [rows]."""
    a_centred = a - a.mean(dim=-1, keepdim=True)
    b_centred = b - b.mean(dim=-1, keepdim=True)
    # NOTE: a constant row has zero norm and gives NaN, as in the reference (no epsilon).
    cosine = (a_centred * b_centred).sum(dim=-1) / (a_centred.norm(dim=-1) * b_centred.norm(dim=-1))
    return 1 - cosine


def _mean_of(values: list[torch.Tensor]) -> torch.Tensor:
    # Sum, then divide, in the reference's order.
    return sum(values[1:], values[0]) / len(values)


def _check_square(matrix: torch.Tensor, name: str) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square [batch, batch] matrix, got shape {tuple(matrix.shape)}")


def _check_same_shape(tensor: torch.Tensor, like: torch.Tensor, name: str, like_name: str) -> None:
    if tensor.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {like_name} has {tuple(like.shape)}")
