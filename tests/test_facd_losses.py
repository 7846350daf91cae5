"""FACD's adaptive indicator (Eq. 1), image loss (Eq. 2), feature contrastive loss (Eq. 3-4) and the regressor's
input normalisation, against explicit loops over samples, matching points and negatives."""
import math

import pytest
import torch

import kd_archs  # noqa: F401
import kd_losses  # noqa: F401
from basicsr.utils.registry import ARCH_REGISTRY
from kd_archs.kd_regressor_arch import normalize_per_sample as regressor_normalize
from kd_losses.kd_facd_loss import adaptive_indicator
from kd_losses.kd_facd_loss import normalize_per_sample as loss_normalize
from conftest import fixed, loss, mae_by_loop


def normalized_by_loop(x):
    """Eq. 3 for one sample: x / sqrt(Σ x²)."""
    return x / math.sqrt(sum(v * v for v in x.flatten().tolist()))


# ------------------------------------------------------------------------------------------------------ Eq. 1 and 2
def outputs_where_the_student_wins_on_samples_0_and_2():
    """Student closer to GT than the teacher on samples 0 and 2, farther on 1 and 3; sample 4 a tie (S = T)."""
    gt = fixed(5, 3, 4, 4, seed=1).sigmoid()
    small, large = 0.01 * fixed(5, 3, 4, 4, seed=2), 0.2 * fixed(5, 3, 4, 4, seed=3)
    student_wins = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool).view(5, 1, 1, 1)
    student = gt + torch.where(student_wins, small, large)
    teacher = gt + torch.where(student_wins, large, small)
    teacher[4] = student[4]
    return student, teacher, gt


def test_adaptive_indicator_is_zero_exactly_where_the_student_beats_the_teacher():
    student, teacher, gt = outputs_where_the_student_wins_on_samples_0_and_2()
    by_loop = [0.0 if mae_by_loop(student[i], gt[i]) < mae_by_loop(teacher[i], gt[i]) else 1.0 for i in range(5)]
    assert by_loop == [0, 1, 0, 1, 1]
    student.requires_grad_()
    alpha = adaptive_indicator(student, teacher, gt)
    assert alpha.tolist() == by_loop and alpha.dtype == student.dtype
    assert not alpha.requires_grad and alpha.grad_fn is None
    built = loss('KDAdaptiveImageLoss')
    assert built.adaptive_indicator(student, teacher, gt).tolist() == by_loop  # reachable from a built loss


@pytest.mark.parametrize('loss_weight', [1.0, 0.3])
@pytest.mark.parametrize('use_alpha', [True, False])
def test_adaptive_image_loss_matches_the_sum_over_samples(loss_weight, use_alpha):
    student, teacher, gt = outputs_where_the_student_wins_on_samples_0_and_2()
    alpha = [0.0, 1.0, 0.0, 1.0, 1.0] if use_alpha else [1.0] * 5
    expected = loss_weight / (2 * 5) * sum(
        (2 - a) * mae_by_loop(student[i], gt[i]) + a * mae_by_loop(student[i], teacher[i]) for i, a in enumerate(alpha))
    given = adaptive_indicator(student, teacher, gt) if use_alpha else None
    value = loss('KDAdaptiveImageLoss', loss_weight=loss_weight)(student, teacher, gt, given)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_adaptive_image_loss_gradient_reaches_the_student_only():
    student, teacher, gt = outputs_where_the_student_wins_on_samples_0_and_2()
    student, teacher = student.requires_grad_(), teacher.requires_grad_()
    alpha = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss('KDAdaptiveImageLoss')(student, teacher, gt, alpha).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().amax(dim=(1, 2, 3)).min() > 0
    assert teacher.grad is None and alpha.grad is None


def test_adaptive_image_loss_refuses_bad_shapes():
    student, teacher, gt = outputs_where_the_student_wins_on_samples_0_and_2()
    with pytest.raises(ValueError, match=r'alpha must have shape \(5,\)'):
        loss('KDAdaptiveImageLoss')(student, teacher, gt, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r'gt \(5, 3, 2, 2\)'):
        loss('KDAdaptiveImageLoss')(student, teacher, gt[:, :, :2, :2])


# ---------------------------------------------------------------------------------------------------------- Eq. 3-4
POINT_SHAPES = [(3, 2, 2, 2), (3, 3, 1, 2), (3, 2, 2, 1)]


def features(batch=3, seed=10):
    students = [fixed(batch, *shape[1:], seed=seed + j) for j, shape in enumerate(POINT_SHAPES)]  # regressed DR(F̂ˢ)
    teachers = [(j + 2.0) * fixed(batch, *shape[1:], seed=seed + 5 + j) for j, shape in enumerate(POINT_SHAPES)]
    return students, teachers


def pair_distance(x, y, distance):
    """d of two single-sample tensors: mean |x − y| or sqrt(mean (x − y)²)."""
    difference = x - y
    return difference.abs().mean() if distance == 'l1' else difference.pow(2).mean().sqrt()


def facd_by_loops(students, teachers, alpha, weights, distance, eps, loss_weight, detach_student_negatives=False):
    """Eq. 4 with explicit loops over matching points j, samples i and negatives k ≠ i (torch scalars, so that the
    gradient can be compared too): negatives of sample i are F̂ᵀ_kj and DR(F̂ˢ_kj) for every k ≠ i."""
    batch = students[0].shape[0]
    total = 0
    for j, (student, teacher) in enumerate(zip(students, teachers)):
        teacher_hat = [teacher[i] / teacher[i].pow(2).sum().sqrt() for i in range(batch)]
        for i in range(batch):
            anchor = student[i]
            denominator = 0
            for k in range(batch):
                if k == i:
                    continue
                negative_s = student[k].detach() if detach_student_negatives else student[k]
                denominator = denominator + pair_distance(anchor, teacher_hat[k], distance)
                denominator = denominator + pair_distance(anchor, negative_s, distance)
            positive = pair_distance(anchor, teacher_hat[i], distance)
            total = total + weights[j] * alpha[i] * positive / (denominator + eps)
    return loss_weight * total


@pytest.mark.parametrize('distance', ['l1', 'l2'])
@pytest.mark.parametrize('alpha', [None, [1.0, 0.0, 1.0]])
@pytest.mark.parametrize('weights, eps, loss_weight', [(None, 1e-7, 1.0), ([0.2, 0.3, 0.5], 0.05, 4.0)])
@pytest.mark.parametrize('reduction, divisor', [('sum', 1), ('mean', 3)])
def test_feature_contrastive_loss_matches_the_triple_loop(distance, alpha, weights, eps, loss_weight, reduction,
                                                          divisor):
    students, teachers = features()
    kwargs = {'distance': distance, 'eps': eps, 'loss_weight': loss_weight, 'reduction': reduction}
    if weights is not None:
        kwargs['point_weights'] = weights
    given = None if alpha is None else torch.tensor(alpha, dtype=torch.float64)
    value = loss('KDFeatureContrastiveLoss', **kwargs)(students, teachers, given)
    expected = facd_by_loops(students, teachers, alpha or [1.0] * 3, weights or [0.5, 0.3, 0.2], distance, eps,
                             loss_weight) / divisor  # 'mean': the sum over the 3 samples divided by 3
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_feature_contrastive_loss_refuses_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of \\('sum', 'mean'\\)"):
        loss('KDFeatureContrastiveLoss', reduction='batchmean')


def test_feature_contrastive_loss_never_counts_the_own_positive_or_own_student_as_a_negative():
    """Batch 2, one point, student features on the unit sphere already: hand-computed ratios."""
    student = torch.tensor([[[[0.6]], [[0.8]]], [[[0.0]], [[1.0]]]], dtype=torch.float64)
    teacher = torch.tensor([[[[3.0]], [[4.0]]], [[[2.0]], [[0.0]]]], dtype=torch.float64)  # F̂ᵀ = (0.6, 0.8), (1, 0)
    # sample 0: positive distance 0 (its teacher is its direction); sample 1: mean|(0, 1) − (1, 0)| = 1
    # negatives of sample 0: F̂ᵀ_1 = (1, 0) -> (0.4 + 0.8) / 2 = 0.6; DR(F̂ˢ_1) = (0, 1) -> (0.6 + 0.2) / 2 = 0.4
    # negatives of sample 1: F̂ᵀ_0 = (0.6, 0.8) -> 0.4; DR(F̂ˢ_0) = (0.6, 0.8) -> 0.4
    value = loss('KDFeatureContrastiveLoss', point_weights=[1.0], eps=0)([student], [teacher])
    assert value.item() == pytest.approx(0 / (0.6 + 0.4) + 1 / (0.4 + 0.4), rel=1e-12)
    # had the own positive (1 for sample 1) and own student feature (0) been negatives too: 0 + 1 / 1.8


def test_feature_contrastive_loss_normalises_each_teacher_sample():
    """Eq. 3 per sample: rescaling each teacher sample by its own positive factor leaves the loss unchanged."""
    students, teachers = features(seed=20)
    facd = loss('KDFeatureContrastiveLoss')
    scales = torch.tensor([0.1, 7.0, 2.0], dtype=torch.float64).view(3, 1, 1, 1)
    assert facd(students, [t * scales for t in teachers]).item() == pytest.approx(
        facd(students, teachers).item(), rel=1e-12)


@pytest.mark.parametrize('distance', ['l1', 'l2'])
def test_detach_student_negatives_changes_the_gradient_not_the_value(distance):
    students, teachers = features(seed=30)
    alpha = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    grads = {}
    for detach in (False, True):
        leaves = [s.clone().requires_grad_() for s in students]
        teacher_leaves = [t.clone().requires_grad_() for t in teachers]
        facd = loss('KDFeatureContrastiveLoss', distance=distance, detach_student_negatives=detach)
        value = facd(leaves, teacher_leaves, alpha)
        *got, grad_t1, grad_t2, grad_t3 = torch.autograd.grad(value, leaves + teacher_leaves, allow_unused=True)
        assert grad_t1 is grad_t2 is grad_t3 is None  # the teacher features are detached
        ref_leaves = [s.clone().requires_grad_() for s in students]
        reference = facd_by_loops(ref_leaves, teachers, alpha.tolist(), [0.5, 0.3, 0.2], distance, 1e-7, 1.0, detach)
        assert value.item() == pytest.approx(reference.item(), rel=1e-12)
        expected = torch.autograd.grad(reference, ref_leaves)
        assert all(torch.allclose(g, e, rtol=1e-9, atol=1e-12) for g, e in zip(got, expected))
        assert all(torch.isfinite(g).all() for g in got)
        grads[detach] = got
    # sample 1 has α = 0: its own ratio is off, so it gets gradient only as another sample's negative
    assert grads[True][0][1].abs().sum() == 0 and grads[False][0][1].abs().sum() > 0


@pytest.mark.parametrize('distance', ['l1', 'l2'])
@pytest.mark.parametrize('detach', [False, True])
def test_identical_samples_give_finite_gradients(distance, detach):
    """Two equal samples put a zero distance among the negatives: the l2 gradient must stay finite."""
    students, teachers = features(seed=40)
    students = [torch.cat([s[:2], s[:1]]).requires_grad_() for s in students]
    teachers = [torch.cat([t[:2], t[:1]]) for t in teachers]
    value = loss('KDFeatureContrastiveLoss', distance=distance, detach_student_negatives=detach)(students, teachers)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(s.grad).all() for s in students)


def test_feature_contrastive_loss_refuses_a_batch_of_one_and_bad_shapes():
    students, teachers = features()
    facd = loss('KDFeatureContrastiveLoss')
    with pytest.raises(ValueError, match='a batch of 1 sample has no negatives'):
        facd([s[:1] for s in students], [t[:1] for t in teachers])
    with pytest.raises(
            ValueError,
            match=r'matching point 1 has student features \(3, 3, 1, 2\) and teacher features '
            r'\(3, 4, 1, 2\)'):
        facd(students, [teachers[0], fixed(3, 4, 1, 2), teachers[2]])
    with pytest.raises(ValueError, match='point_weights has 3 matching points but got 2 student'):
        facd(students[:2], teachers[:2])
    with pytest.raises(ValueError, match=r'alpha must have shape \(3,\)'):
        facd(students, teachers, torch.ones(2))
    with pytest.raises(ValueError, match='distance must be one of'):
        loss('KDFeatureContrastiveLoss', distance='cosine')


# ------------------------------------------------------------------------------------------------------- regressor
def test_regressor_normalize_input_divides_each_sample_by_its_l2_norm():
    torch.manual_seed(0)
    plain = ARCH_REGISTRY.get('KDConvRegressor')(in_channels=[3, 2], out_channels=[4, 5], num_layers=5).double()
    normalizing = ARCH_REGISTRY.get('KDConvRegressor')(
        in_channels=[3, 2], out_channels=[4, 5], num_layers=5, normalize_input=True).double()
    normalizing.load_state_dict(plain.state_dict())  # no parameter added by the flag
    inputs = [fixed(2, 3, 4, 4, seed=50), fixed(2, 2, 3, 2, seed=51)]
    by_loop = [torch.stack([normalized_by_loop(x[i]) for i in range(2)]) for x in inputs]
    for got, expected in zip(normalizing(inputs), plain(by_loop)):
        assert torch.allclose(got, expected, atol=1e-12)
    # off by default (FitNet unchanged): the raw features go straight into the convolutions
    assert all(torch.equal(got, stack(x)) for got, stack, x in zip(plain(inputs), plain.regressors, inputs))
    # per-sample scale invariance
    scaled = [x * torch.tensor([3.0, 0.2], dtype=torch.float64).view(2, 1, 1, 1) for x in inputs]
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(normalizing(scaled), normalizing(inputs)))


def test_regressor_and_loss_normalise_with_the_same_formula():
    feature = fixed(3, 4, 5, 2, seed=60)
    for x in (feature, feature.contiguous(memory_format=torch.channels_last), torch.zeros(2, 3, 2, 2)):
        assert torch.equal(regressor_normalize(x), loss_normalize(x))
    assert torch.allclose(loss_normalize(feature), torch.stack([normalized_by_loop(f) for f in feature]), atol=1e-15)
