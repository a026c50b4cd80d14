"""TeachCLIP losses against float64 re-derivations written with plain loops."""

import math

import numpy as np
import pytest
import torch

from pipeline.losses import (
    LossTerms,
    NonFiniteLossError,
    TeachCLIPLoss,
    assert_finite_terms,
    coarse_distill_loss,
    fine_distill_loss,
    ground_truth_loss,
)

BATCH = 5
FRAMES = 7


def make_logits(seed: int, scale: float = 10.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, BATCH, generator=generator, dtype=torch.float64) * scale


def make_frame_distribution(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, FRAMES, generator=generator, dtype=torch.float64).softmax(-1)


# Independent float64 re-derivations, one row at a time.

def softmax_row(row):
    shifted = [math.exp(v - max(row)) for v in row]
    total = sum(shifted)
    return [v / total for v in shifted]


def log_softmax_row(row):
    top = max(row)
    log_total = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_total for v in row]


def reference_ground_truth(logits):
    x = np.asarray(logits, dtype=np.float64)
    n = x.shape[0]
    rows = sum(-log_softmax_row(list(x[i]))[i] for i in range(n)) / n
    columns = sum(-log_softmax_row(list(x[:, j]))[j] for j in range(n)) / n
    return (rows + columns) / 2


def reference_soft_ce(student, teacher):
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        log_p = log_softmax_row(list(s_row))
        q = softmax_row(list(t_row))
        total += sum(-qi * lpi for qi, lpi in zip(q, log_p))
    return total / student.size


def pearson(a, b):
    a_mean = sum(a) / len(a)
    b_mean = sum(b) / len(b)
    num = sum((x - a_mean) * (y - b_mean) for x, y in zip(a, b))
    a_norm = math.sqrt(sum((x - a_mean) ** 2 for x in a))
    b_norm = math.sqrt(sum((y - b_mean) ** 2 for y in b))
    return num / (a_norm * b_norm)


def reference_row_pearson_distance(a, b):
    return sum(1 - pearson(list(x), list(y)) for x, y in zip(a, b)) / len(a)


def smooth_l1(a, b):
    total = 0.0
    for x, y in zip(np.ravel(a), np.ravel(b)):
        d = abs(x - y)
        total += 0.5 * d * d if d < 1.0 else d - 0.5
    return total / np.size(a)


def reference_coarse(student, teacher, method):
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    if method == "ce":
        return reference_soft_ce(s, t) + reference_soft_ce(s.T, t.T)
    if method == "pear":
        rows = reference_row_pearson_distance([softmax_row(list(r)) for r in s],
                                              [softmax_row(list(r)) for r in t])
        columns = reference_row_pearson_distance([softmax_row(list(r)) for r in s.T],
                                                 [softmax_row(list(r)) for r in t.T])
        return rows + columns
    return smooth_l1(t, s)


def reference_fine(weights, targets, method):
    w = np.asarray(weights, dtype=np.float64)
    r = np.asarray(targets, dtype=np.float64)
    if method == "ce":
        return sum(-math.log(wi) * ri for wi, ri in zip(w.ravel(), r.ravel())) / w.size
    if method == "pear":
        return reference_row_pearson_distance(w, r)
    return smooth_l1(w, r)


def test_ground_truth_matches_loops():
    logits = make_logits(0)
    expected = reference_ground_truth(logits.numpy())
    assert ground_truth_loss(logits).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method", ["ce", "pear", "l1"])
def test_coarse_method_matches_loops(method):
    # Scale 1 keeps some logit differences under smooth L1's transition point of 1.
    student, teacher = make_logits(1, scale=1.0), make_logits(2, scale=1.0)
    expected = reference_coarse(student.numpy(), teacher.numpy(), method)
    assert coarse_distill_loss(student, teacher, method).item() == pytest.approx(expected, rel=1e-12)


def test_coarse_l1_covers_both_branches():
    student, teacher = make_logits(1, scale=1.0), make_logits(2, scale=1.0)
    differences = (student - teacher).abs()
    assert bool((differences < 1).any())
    assert bool((differences >= 1).any())


@pytest.mark.parametrize("method", ["ce", "pear", "l1"])
def test_fine_method_matches_loops(method):
    weights, targets = make_frame_distribution(3), make_frame_distribution(4)
    expected = reference_fine(weights.numpy(), targets.numpy(), method)
    assert fine_distill_loss(weights, targets, method).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("coarse_method, weights", [("ce", (1.0, 10.0, 1.0)),
                                                    ("pear", (0.2, 1.0, 2.0)),
                                                    ("l1", (0.2, 1.0, 2.0))])
def test_total_weighting_per_coarse_method(coarse_method, weights):
    student, teacher = make_logits(5), make_logits(6)
    frame_weights, frame_targets = make_frame_distribution(7), make_frame_distribution(8)

    terms = TeachCLIPLoss(coarse_method, "ce")(student, frame_weights, [teacher], [frame_targets])

    ground_truth = reference_ground_truth(student.numpy())
    coarse = reference_coarse(student.numpy(), teacher.numpy(), coarse_method)
    fine = reference_fine(frame_weights.numpy(), frame_targets.numpy(), "ce")
    expected_total = weights[0] * ground_truth + weights[1] * coarse + weights[2] * fine
    assert terms.ground_truth.item() == pytest.approx(ground_truth, rel=1e-12)
    assert terms.coarse.item() == pytest.approx(coarse, rel=1e-12)
    assert terms.fine.item() == pytest.approx(fine, rel=1e-12)
    assert terms.total.item() == pytest.approx(expected_total, rel=1e-12)


def test_teachers_are_averaged():
    student = make_logits(10)
    teachers = [make_logits(11), make_logits(12), make_logits(13)]
    frame_weights = make_frame_distribution(14)
    targets = [make_frame_distribution(15), make_frame_distribution(16), make_frame_distribution(17)]

    terms = TeachCLIPLoss("pear", "pear")(student, frame_weights, teachers, targets)

    coarse = sum(reference_coarse(student.numpy(), t.numpy(), "pear") for t in teachers) / 3
    fine = sum(reference_fine(frame_weights.numpy(), r.numpy(), "pear") for r in targets) / 3
    assert terms.coarse.item() == pytest.approx(coarse, rel=1e-12)
    assert terms.fine.item() == pytest.approx(fine, rel=1e-12)


def test_beta_divides_both_logit_matrices():
    beta = 2.5
    student, teacher = make_logits(20), make_logits(21)
    frame_weights, frame_targets = make_frame_distribution(22), make_frame_distribution(23)

    terms = TeachCLIPLoss("ce", "l1", beta=beta)(student, frame_weights, [teacher], [frame_targets])

    scaled_student = student.numpy() / beta
    scaled_teacher = teacher.numpy() / beta
    assert terms.ground_truth.item() == pytest.approx(reference_ground_truth(scaled_student), rel=1e-12)
    expected_coarse = reference_coarse(scaled_student, scaled_teacher, "ce")
    assert terms.coarse.item() == pytest.approx(expected_coarse, rel=1e-12)
    # Frame distributions are not divided by beta.
    expected_fine = reference_fine(frame_weights.numpy(), frame_targets.numpy(), "l1")
    assert terms.fine.item() == pytest.approx(expected_fine, rel=1e-12)


def test_no_teachers_gives_ground_truth():
    student = make_logits(30)
    terms = TeachCLIPLoss("pear", "ce")(student, make_frame_distribution(31), [], [])
    assert terms.total.item() == pytest.approx(reference_ground_truth(student.numpy()), rel=1e-12)
    assert terms.coarse.item() == 0.0
    assert terms.fine.item() == 0.0


def test_gradients_reach_student_only():
    student = make_logits(40).requires_grad_()
    raw_frame_scores = torch.randn(BATCH, FRAMES, dtype=torch.float64, requires_grad=True)
    teacher = make_logits(41).requires_grad_()

    terms = TeachCLIPLoss("pear", "ce")(student, raw_frame_scores.softmax(-1), [teacher],
                                       [make_frame_distribution(42)])
    terms.total.backward()

    assert student.grad is not None and bool(torch.isfinite(student.grad).all())
    assert float(student.grad.abs().sum()) > 0
    assert raw_frame_scores.grad is not None and float(raw_frame_scores.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_mismatched_teacher_outputs_rejected():
    with pytest.raises(ValueError, match="1 teachers but frame targets from 2"):
        TeachCLIPLoss()(make_logits(0), make_frame_distribution(1), [make_logits(2)],
                        [make_frame_distribution(3), make_frame_distribution(4)])


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="invalid coarse_method 'kl'"):
        TeachCLIPLoss(coarse_method="kl")


def test_nan_term_names_step_and_samples():
    one = torch.tensor(1.0)
    terms = LossTerms(total=torch.tensor(float("nan")), ground_truth=one,
                      coarse=one, fine=torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLossError) as caught:
        assert_finite_terms(terms, step=17, sample_ids=["video7#3", "video9#0"])
    message = str(caught.value)
    assert "step 17" in message
    assert "video7#3, video9#0" in message
    assert "total=nan" in message
    assert "fine=inf" in message
    assert "coarse" not in message


def test_finite_terms_pass_check():
    one = torch.tensor(1.0)
    assert_finite_terms(LossTerms(one, one, one, one), step=0, sample_ids=[0, 1])
