"""SKD: MCA (Eq. 1), the Gaussian kernel loss (Eq. 2-3), the image contrastive loss (Eq. 4) and the projector,
against direct computations of the printed formulas (python loops, float64) on fixed inputs."""
import math

import pytest
import torch

import kd_archs, kd_losses  # noqa: F401,E401
from basicsr.utils.registry import ARCH_REGISTRY
from kd_losses.kd_skd_loss import gaussian_kernel_distance, mca_channel, mca_spatial
from conftest import fixed, loss


def as_lists(feature):
    """(B, d, H, W) -> per sample, a d x HW nested list (channel rows, flattened positions)."""
    return [[row for row in sample.flatten(1).tolist()] for sample in feature]


def channel_interaction_by_loops(student, teacher, lam):
    """S_fc = softmax(T_f·S_fᵀ/λ)·S_f per sample, softmax over j (the student channel, summed with S_f)."""
    out = []
    for s, t in zip(as_lists(student), as_lists(teacher)):
        d, hw = len(s), len(s[0])
        logits = [[sum(t[i][p] * s[j][p] for p in range(hw)) / lam for j in range(d)] for i in range(d)]
        rows = []
        for i in range(d):
            top = max(logits[i])
            weights = [math.exp(v - top) for v in logits[i]]
            total = sum(weights)
            rows.append([sum(weights[j] / total * s[j][p] for j in range(d)) for p in range(hw)])
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64).view_as(student)


def spatial_interaction_by_loops(student, teacher, lam):
    """S_ft = S_f·softmax(T_fᵀ·S_f/λ) per sample, softmax over p (the teacher position, summed with S_f)."""
    out = []
    for s, t in zip(as_lists(student), as_lists(teacher)):
        d, hw = len(s), len(s[0])
        logits = [[sum(t[c][p] * s[c][q] for c in range(d)) / lam for q in range(hw)] for p in range(hw)]
        columns = []
        for q in range(hw):
            column = [logits[p][q] for p in range(hw)]
            top = max(column)
            weights = [math.exp(v - top) for v in column]
            total = sum(weights)
            columns.append([sum(s[c][p] * weights[p] / total for p in range(hw)) for c in range(d)])
        out.append([[columns[q][c] for q in range(hw)] for c in range(d)])
    return torch.tensor(out, dtype=torch.float64).view_as(student)


def gk_by_loops(x, y, sigma, squared_distance='mean'):
    """Eq. 2 per sample over all elements; the list of per-sample values."""
    values = []
    for a, b in zip(x.flatten(1).tolist(), y.flatten(1).tolist()):
        squared = sum((u - v)**2 for u, v in zip(a, b))
        if squared_distance == 'mean':
            squared /= len(a)
        values.append(1 - math.exp(-squared / (2 * sigma**2)))
    return values


def gk_loss_by_loops(students, teachers, sigma, alpha, channel, spatial, loss_weight):
    """Eq. 3: loss_weight · Σ_blocks mean_b [GK(S_f, T_f) + α₁(GK(S_fc, T_f) + GK(S_ft, T_f))]."""
    total = 0
    for s, t in zip(students, teachers):
        lam = math.sqrt(s.shape[1])
        terms = [gk_by_loops(s, t, sigma)]
        if channel:
            terms.append([alpha * v for v in gk_by_loops(channel_interaction_by_loops(s, t, lam), t, sigma)])
        if spatial:
            terms.append([alpha * v for v in gk_by_loops(spatial_interaction_by_loops(s, t, lam), t, sigma)])
        per_sample = [sum(values) for values in zip(*terms)]
        total += sum(per_sample) / len(per_sample)
    return loss_weight * total


def contrastive_by_loops(anchors, positives, negatives, tau, layer_weights, loss_weight):
    """−log of Eq. 4's ratio with sim = exp(cos/τ), cos of flattened per-sample features; every negative for every
    anchor; mean over anchors, weighted sum over layers."""

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    total = 0
    for weight, a_layer, p_layer, n_layer in zip(layer_weights, anchors, positives, negatives):
        a_rows, p_rows, n_rows = (x.flatten(1).tolist() for x in (a_layer, p_layer, n_layer))
        terms = []
        for a, p in zip(a_rows, p_rows):
            positive = math.exp(cos(a, p) / tau)
            ratio = positive / (positive + sum(math.exp(cos(a, n) / tau) for n in n_rows))
            terms.append(-math.log(ratio))
        total += weight * sum(terms) / len(terms)
    return loss_weight * total


# -------------------------------------------------------------------------------------------------------- MCA
@pytest.mark.parametrize('temperature', [None, 0.7])
def test_channel_interaction_matches_the_loops_with_softmax_over_student_channels(temperature):
    student, teacher = fixed(2, 3, 2, 3, seed=1), fixed(2, 3, 2, 3, seed=2)
    lam = math.sqrt(3) if temperature is None else temperature
    expected = channel_interaction_by_loops(student, teacher, lam)
    assert torch.allclose(mca_channel(student, teacher, temperature), expected, rtol=1e-12, atol=1e-12)
    # the other reading (normalising over the teacher channel i) is a different matrix: the test can tell them apart
    s, t = student.flatten(2), teacher.flatten(2)
    other = (torch.softmax(t @ s.transpose(1, 2) / lam, dim=1) @ s).view_as(student)
    assert not torch.allclose(other, expected, atol=1e-3)


@pytest.mark.parametrize('temperature', [None, 0.7])
def test_spatial_interaction_matches_the_loops_with_softmax_over_teacher_positions(temperature):
    student, teacher = fixed(2, 3, 2, 3, seed=3), fixed(2, 3, 2, 3, seed=4)
    lam = math.sqrt(3) if temperature is None else temperature
    expected = spatial_interaction_by_loops(student, teacher, lam)
    for chunk in (None, 2, 4):
        result = mca_spatial(student, teacher, temperature, chunk=chunk)
        assert torch.allclose(result, expected, rtol=1e-12, atol=1e-12), f'chunk {chunk}'
    s, t = student.flatten(2), teacher.flatten(2)
    other = (s @ torch.softmax(t.transpose(1, 2) @ s / lam, dim=2)).view_as(student)
    assert not torch.allclose(other, expected, atol=1e-3)


def test_chunked_spatial_interaction_equals_the_whole_matrix_in_value_and_gradient():
    # 3 x 5 = 15 positions: chunks 1, 3, 5, 15 divide it, 4 and 7 do not, 100 is one chunk
    student, teacher = fixed(2, 4, 3, 5, seed=5), fixed(2, 4, 3, 5, seed=6)
    weight = fixed(2, 4, 3, 5, seed=7)

    def run(chunk, pool=1):
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        out = mca_spatial(s, t, chunk=chunk, pool=pool)
        return (out, *torch.autograd.grad((out * weight).sum(), (s, t)))

    whole = run(None)
    assert all(g.abs().sum() > 0 for g in whole[1:])
    for chunk in (1, 3, 4, 5, 7, 15, 100):
        for got, want in zip(run(chunk), whole):
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), f'chunk {chunk}'


@pytest.mark.parametrize('pool, size', [(2, (4, 6)), (2, (5, 7)), (3, (6, 4))])
def test_pooled_spatial_interaction_is_exact_on_features_constant_within_windows(pool, size):
    """Keys/values pooled over pool x pool windows (partial at the border for 5x7 and 6x4 with pool 3) with the
    log-count correction give the exact S_ft when T_f and S_f are constant within each window."""

    def blocky(seed):
        coarse = fixed(2, 3, -(-size[0] // pool), -(-size[1] // pool), seed=seed)
        return coarse.repeat_interleave(pool, 2).repeat_interleave(pool, 3)[:, :, :size[0], :size[1]]

    student, teacher = blocky(8), blocky(9)
    exact = spatial_interaction_by_loops(student, teacher, math.sqrt(3))
    for chunk in (None, 5):
        pooled = mca_spatial(student, teacher, chunk=chunk, pool=pool)
        assert torch.allclose(pooled, exact, rtol=1e-10, atol=1e-12), f'chunk {chunk}'
    # on generic features pooling is an approximation, not the exact form
    student, teacher = fixed(2, 3, *size, seed=10), fixed(2, 3, *size, seed=11)
    assert not torch.allclose(mca_spatial(student, teacher, pool=pool), mca_spatial(student, teacher), atol=1e-3)


# --------------------------------------------------------------------------------------------------------- GK
@pytest.mark.parametrize('sigma', [0.5, 2.0])
@pytest.mark.parametrize('squared_distance', ['mean', 'sum'])
def test_gaussian_kernel_distance_matches_eq2(sigma, squared_distance):
    x, y = fixed(3, 2, 2, 2, seed=12), fixed(3, 2, 2, 2, seed=13)
    expected = gk_by_loops(x, y, sigma, squared_distance)
    got = gaussian_kernel_distance(x, y, sigma, squared_distance)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('sigma, alpha', [(0.5, 0.5), (2.0, 0.5), (0.5, 0.25), (2.0, 0.25)])
@pytest.mark.parametrize('channel, spatial', [(True, True), (True, False), (False, True), (False, False)])
def test_gaussian_kernel_loss_matches_eq3_with_the_ablation_switches(sigma, alpha, channel, spatial):
    # two blocks of different widths d and sizes; chunk 4 does not divide either block's HW (6 and 9)
    students = [fixed(2, 3, 2, 3, seed=14), fixed(2, 2, 3, 3, seed=15)]
    teachers = [fixed(2, 3, 2, 3, seed=16), fixed(2, 2, 3, 3, seed=17)]
    expected = gk_loss_by_loops(students, teachers, sigma, alpha, channel, spatial, loss_weight=0.3)
    gk = loss(
        'KDGaussianKernelLoss',
        sigma=sigma,
        alpha=alpha,
        channel_interaction=channel,
        spatial_interaction=spatial,
        spatial_chunk=4,
        loss_weight=0.3)
    assert gk(students, teachers).item() == pytest.approx(expected, rel=1e-12)


def test_gaussian_kernel_loss_defaults_are_the_papers():
    gk = loss('KDGaussianKernelLoss')
    assert (gk.alpha, gk.loss_weight, gk.sigma, gk.temperature, gk.squared_distance) == (0.5, 0.2, 1.0, None, 'mean')
    assert gk.channel_interaction and gk.spatial_interaction and gk.spatial_pool == 1


def test_mean_squared_distance_keeps_the_gradient_alive_where_the_printed_norm_saturates():
    """At a real feature size (d 16, 64 x 64) with a per-element error of ~0.3, ‖·‖² summed is ~6000 σ²: GK = 1
    and its gradient is 0; the per-element mean keeps GK in its sensitive range."""
    teacher = fixed(1, 16, 64, 64, seed=18)
    student = (teacher + 0.3 * fixed(1, 16, 64, 64, seed=19)).requires_grad_()
    for squared_distance, alive in (('sum', False), ('mean', True)):
        value = gaussian_kernel_distance(student, teacher, 1.0, squared_distance).sum()
        (grad, ) = torch.autograd.grad(value, student)
        assert (grad.abs().max() > 1e-6) == alive, squared_distance
        assert (value.item() < 0.5) == alive, squared_distance


def test_gaussian_kernel_loss_reports_the_mean_and_the_saturated_share_of_its_kernel_values():
    """A zero student against constant teachers c = 0, 1, 3, 4 (σ 1, mean squared distance c²): GK = 1 − exp(−c²/2)
    = 0, 0.39, 0.989, 0.9997; only c = 4 is above 0.99. S_fc and S_ft of a zero student are zero too, so each of the
    three terms has the same four values."""
    levels = torch.tensor([0., 1., 3., 4.], dtype=torch.float64)
    student, teacher = torch.zeros(4, 2, 3, 3, dtype=torch.float64), levels.view(4, 1, 1, 1).expand(4, 2, 3, 3)
    gk = loss('KDGaussianKernelLoss')
    gk([student], [teacher])
    values = [1 - math.exp(-c**2 / 2) for c in levels.tolist()]
    statistics = gk.saturation()
    assert list(statistics) == ['gk_mean', 'gk_saturated']
    assert statistics['gk_mean'].item() == pytest.approx(sum(values) / 4, rel=1e-12)
    assert statistics['gk_saturated'].item() == 0.25
    gk([student[:1]], [teacher[:1]])  # the last forward only
    assert gk.saturation()['gk_mean'].item() == 0 and gk.saturation()['gk_saturated'].item() == 0


def test_gaussian_kernel_loss_refuses_unprojected_features_and_bad_options():
    with pytest.raises(ValueError, match='KDFeatureProjector'):
        loss('KDGaussianKernelLoss')([fixed(1, 3, 4, 4)], [fixed(1, 5, 4, 4)])
    with pytest.raises(ValueError, match='tap 0 has student features'):
        loss('KDGaussianKernelLoss')([fixed(1, 3, 4, 4)], [fixed(1, 3, 2, 2)])
    bad = (('sigma', 0), ('squared_distance', 'l2'), ('spatial_chunk', 0), ('spatial_pool', 0), ('temperature', -1))
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            loss('KDGaussianKernelLoss', **{name: value})


# ------------------------------------------------------------------------------------------------ contrastive
def contrastive_inputs(dtype=torch.float64):
    # layer 0: (3, 2, 3, 3) anchors; layer 1: (3, 4, 2, 2); four degraded negatives (more than b = 3)
    anchors = [fixed(3, 2, 3, 3, seed=20, dtype=dtype), fixed(3, 4, 2, 2, seed=21, dtype=dtype)]
    positives = [fixed(3, 2, 3, 3, seed=22, dtype=dtype), fixed(3, 4, 2, 2, seed=23, dtype=dtype)]
    negatives = [fixed(4, 2, 3, 3, seed=24, dtype=dtype), fixed(4, 4, 2, 2, seed=25, dtype=dtype)]
    return anchors, positives, negatives


@pytest.mark.parametrize('tau', [0.5, 0.1])
@pytest.mark.parametrize('layer_weights', [None, [0.25, 2.0]])
def test_contrastive_loss_is_minus_log_of_eq4(tau, layer_weights):
    anchors, positives, negatives = contrastive_inputs()
    expected = contrastive_by_loops(anchors, positives, negatives, tau, layer_weights or [1, 1], loss_weight=0.7)
    cl = loss('KDImageContrastiveLoss', temperature=tau, layer_weights=layer_weights, loss_weight=0.7)
    assert cl(anchors, positives, negatives).item() == pytest.approx(expected, rel=1e-12)
    # a single tensor is one layer
    single = contrastive_by_loops(anchors[:1], positives[:1], negatives[:1], tau, [1], loss_weight=0.7)
    cl = loss('KDImageContrastiveLoss', temperature=tau, loss_weight=0.7)
    assert cl(anchors[0], positives[0], negatives[0]).item() == pytest.approx(single, rel=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_contrastive_loss_at_the_papers_temperature_is_finite_and_a_hinge(dtype):
    anchors, positives, negatives = contrastive_inputs(dtype)
    anchors = [a.requires_grad_() for a in anchors]
    cl = loss('KDImageContrastiveLoss', loss_weight=1.0)
    assert cl.temperature == 1e-6
    value = cl(anchors, positives, negatives)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0 for a in anchors)
    assert all(p.grad is None for p in positives + negatives)
    # ≈ Σ_layers mean_i max(0, max_q cos(a_i, n_q) − cos(a_i, p_i)) / τ, up to log(1 + n) per term
    hinge = 0
    for a, p, n in zip(anchors, positives, negatives):
        a, p, n = (torch.nn.functional.normalize(x.detach().double().flatten(1), dim=1) for x in (a, p, n))
        hinge += ((a @ n.t()).amax(1) - (a * p).sum(1)).clamp(min=0).mean().item() / 1e-6
    assert hinge > 1e4 and value.item() == pytest.approx(hinge, abs=2 * math.log(5) + 1e-3 * hinge)
    # an anchor equal to its positive beats every negative by far more than τ: the term vanishes
    assert cl(positives, positives, negatives).item() == pytest.approx(0, abs=1e-6)


def test_contrastive_loss_decreases_as_the_anchor_moves_toward_the_positive():
    anchors, positives, negatives = contrastive_inputs()
    cl = loss('KDImageContrastiveLoss', temperature=0.1)
    values = [
        cl([(1 - t) * a + t * p for a, p in zip(anchors, positives)], positives, negatives).item()
        for t in (0, 0.25, 0.5, 0.75, 1)
    ]
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values


def test_contrastive_loss_refuses_mismatched_layers():
    anchors, positives, negatives = contrastive_inputs()
    with pytest.raises(ValueError, match='equally many'):
        loss('KDImageContrastiveLoss')(anchors, positives, negatives[:1])
    with pytest.raises(ValueError, match='layer_weights has 1 entries for 2'):
        loss('KDImageContrastiveLoss', layer_weights=[1])(anchors, positives, negatives)
    with pytest.raises(ValueError, match='layer 1 has anchor'):
        loss('KDImageContrastiveLoss')(anchors, positives, [negatives[0], negatives[0]])
    with pytest.raises(ValueError, match='temperature'):
        loss('KDImageContrastiveLoss', temperature=0)


# -------------------------------------------------------------------------------------------------- projector
def projector(teacher_side='trainable'):
    torch.manual_seed(0)
    return ARCH_REGISTRY.get('KDFeatureProjector')(
        student_channels=[4, 6], teacher_channels=[8, 5], dim=3, teacher_side=teacher_side)


def test_projector_maps_both_sides_to_dim_and_the_gk_loss_trains_both():
    proj = projector()
    students = [torch.rand(2, 4, 5, 5).requires_grad_(), torch.rand(2, 6, 3, 4).requires_grad_()]
    teachers = [torch.rand(2, 8, 5, 5), torch.rand(2, 5, 3, 4)]
    s_f, t_f = proj(students, teachers)
    assert [tuple(x.shape) for x in s_f] == [(2, 3, 5, 5), (2, 3, 3, 4)]
    assert [tuple(x.shape) for x in t_f] == [(2, 3, 5, 5), (2, 3, 3, 4)]
    assert all(
        type(m).__name__ == 'Conv2d' and m.kernel_size == (1, 1) for m in [*proj.student_proj, *proj.teacher_proj])
    loss('KDGaussianKernelLoss', spatial_chunk=7)(s_f, t_f).backward()
    for name, param in proj.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(s.grad.abs().sum() > 0 for s in students) and all(t.grad is None for t in teachers)


def test_projector_refuses_mismatched_spatial_sizes_channels_and_taps():
    proj = projector()
    with pytest.raises(
            ValueError,
            match=r'tap 1 has student features \(2, 6, 3, 4\) and teacher features '
            r'\(2, 5, 6, 8\); batch and spatial size must match'):
        proj([torch.rand(2, 4, 5, 5), torch.rand(2, 6, 3, 4)], [torch.rand(2, 8, 5, 5), torch.rand(2, 5, 6, 8)])
    with pytest.raises(ValueError, match='tap 0 has 4 student and 7 teacher channels'):
        proj([torch.rand(2, 4, 5, 5), torch.rand(2, 6, 3, 4)], [torch.rand(2, 7, 5, 5), torch.rand(2, 5, 3, 4)])
    with pytest.raises(ValueError, match='expected 2 student and 2 teacher features'):
        proj([torch.rand(2, 4, 5, 5)], [torch.rand(2, 8, 5, 5)])
    with pytest.raises(ValueError, match='same taps'):
        ARCH_REGISTRY.get('KDFeatureProjector')(student_channels=[4], teacher_channels=[8, 5], dim=3)
    with pytest.raises(ValueError, match='dim'):
        ARCH_REGISTRY.get('KDFeatureProjector')(student_channels=[4], teacher_channels=[8], dim=0)
