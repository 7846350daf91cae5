"""FitNet, AT, FAKD and LFD/LSFD losses and the regressor against direct computations of their formulas on fixed inputs.

The ``*_reference`` functions are the papers' equations written densely in plain torch; test_feature_model.py
reuses them to recompute the losses a training step logs.
"""
import itertools
import math

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import fixed, loss


def affinity_by_loops(feature):
    """A[b, i, j] = cosine of the channel vectors at positions i and j, one position pair at a time."""
    batch, channels, height, width = feature.shape
    vectors = [[[feature[b, c, p // width, p % width].item() for c in range(channels)]
                for p in range(height * width)] for b in range(batch)]
    affinity = torch.zeros(batch, height * width, height * width, dtype=torch.float64)
    for b in range(batch):
        for i, u in enumerate(vectors[b]):
            for j, v in enumerate(vectors[b]):
                dot = sum(x * y for x, y in zip(u, v))
                affinity[b, i, j] = dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))
    return affinity


def affinity_reference(feature):
    """A = F̂ᵀF̂ with F̂ the (B, C, HW) features divided by the norm of each position's channel vector, in one piece."""
    vectors = feature.flatten(2)
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    return vectors.transpose(1, 2) @ vectors


def spatial_affinity_reference(students, teachers, loss_weight):
    """FAKD: w_sa · Σ_taps mean|A_S − A_T|."""
    return loss_weight * sum((affinity_reference(s) - affinity_reference(t)).abs().mean()
                             for s, t in zip(students, teachers))


def attention_reference(feature):
    """Q = channel mean of F², flattened, divided by its L2 norm, per sample."""
    q = feature.pow(2).mean(1).flatten(1)
    return q / q.norm(dim=1, keepdim=True)


def attention_transfer_reference(students, teachers, beta, loss_weight):
    """AT: loss_weight · β/2 · Σ_taps mean((Q_S − Q_T)²)."""
    return loss_weight * beta / 2 * sum((attention_reference(s) - attention_reference(t)).pow(2).mean()
                                        for s, t in zip(students, teachers))


def hint_reference(students, teachers, loss_weight):
    """FitNet: loss_weight · Σ_taps mean((r(F_S) − F_T)²), the students already regressed."""
    return loss_weight * sum(((s - t)**2).sum() / s.numel() for s, t in zip(students, teachers))


def local_selective_reference(students, teachers, selective, temperature, loss_weight):
    """LFD/LSFD: loss_weight · Σ_taps Σ_{b,c,p} a_bp |R − T| / (B·C·HW), a_bp = HW · e^{r_bp/τ} / Σ_q e^{r_bq/τ} with
    r = d / mean_p d and d the channel mean of |R − T| (a_bp = 1 for LFD), the students already regressed."""
    total = 0
    for s, t in zip(students, teachers):
        distance = (s - t).abs()
        positions = distance[0, 0].numel()
        weights = torch.ones_like(distance[:, :1])
        if selective:
            difference = distance.sum(1, keepdim=True) / distance.shape[1]
            ratio = difference / (difference.sum((2, 3), keepdim=True) / positions)
            exponentials = torch.exp(ratio / temperature)
            weights = positions * exponentials / exponentials.sum((2, 3), keepdim=True)
        total = total + (weights * distance).sum() / distance.numel()
    return loss_weight * total


def lsfd_weights_by_loops(distance, temperature):
    """a[b][p] of one tap from its |R − T| as nested lists [b][c][p], position by position."""
    weights = []
    for sample in distance:
        channels, positions = len(sample), len(sample[0])
        difference = [sum(sample[c][p] for c in range(channels)) / channels for p in range(positions)]
        mean = sum(difference) / positions
        exponentials = [math.exp(d / mean / temperature) for d in difference]
        weights.append([positions * e / sum(exponentials) for e in exponentials])
    return weights


def lsfd_by_loops(students, teachers, selective, temperature, loss_weight):
    """LFD/LSFD one sample, channel and position at a time (float64 lists)."""
    total = 0.0
    for s, t in zip(students, teachers):
        batch, channels = s.shape[:2]
        distance = [[[abs(a - b) for a, b in zip(s[i, c].flatten().tolist(), t[i, c].flatten().tolist())]
                     for c in range(channels)] for i in range(batch)]
        positions = len(distance[0][0])
        weights = lsfd_weights_by_loops(distance, temperature) if selective else [[1.0] * positions] * batch
        total += sum(weights[i][p] * distance[i][c][p] for i in range(batch) for c in range(channels)
                     for p in range(positions)) / (batch * channels * positions)
    return loss_weight * total


# ----------------------------------------------------------------------------------------------------- LFD / LSFD
LSFD_TAPS = ((2, 3, 3, 4), (2, 2, 2, 2))  # two taps: 2 samples, 3 channels, 3x4 positions; then 2 channels, 2x2


def lsfd_inputs():
    students = [fixed(*shape, seed=20 + i) for i, shape in enumerate(LSFD_TAPS)]
    teachers = [fixed(*shape, seed=30 + i) for i, shape in enumerate(LSFD_TAPS)]
    return students, teachers


@pytest.mark.parametrize('selective, temperature, loss_weight', list(itertools.product([True, False], [0.5, 3.0],
                                                                                       [1.0, 0.25])))
def test_local_selective_loss_matches_the_loop_definition(selective, temperature, loss_weight):
    students, teachers = lsfd_inputs()
    by_loops = lsfd_by_loops(students, teachers, selective, temperature, loss_weight)
    reference = local_selective_reference(students, teachers, selective, temperature, loss_weight)
    assert reference.item() == pytest.approx(by_loops, rel=1e-12)
    for detach in (True, False):  # the value does not depend on whether the attention is differentiated
        value = loss('KDLocalSelectiveFeatureLoss', selective=selective, temperature=temperature,
                     detach_attention=detach, loss_weight=loss_weight)(students, teachers)
        assert value.item() == pytest.approx(by_loops, rel=1e-12)


def test_local_selective_attention_concentrates_as_the_temperature_falls():
    """τ = 0.5 puts more weight on the largest differences than τ = 3, and a large τ tends to LFD."""
    students, teachers = lsfd_inputs()
    distance = [[[abs(a - b) for a, b in zip(s.flatten().tolist(), t.flatten().tolist())] for s, t in zip(ss, ts)]
                for ss, ts in zip(students[0], teachers[0])]  # [b][c][p] of tap 0
    sharp, soft = lsfd_weights_by_loops(distance, 0.5), lsfd_weights_by_loops(distance, 3.0)
    assert max(sharp[0]) > max(soft[0]) > 1 > min(soft[0]) > min(sharp[0])
    assert lsfd_by_loops(students, teachers, True, 0.5, 1) > lsfd_by_loops(students, teachers, True, 3.0, 1) > \
        lsfd_by_loops(students, teachers, False, 1.0, 1)
    almost_lfd = loss('KDLocalSelectiveFeatureLoss', temperature=1e6)(students, teachers).item()
    assert almost_lfd == pytest.approx(lsfd_by_loops(students, teachers, False, 1.0, 1), rel=1e-5)


@pytest.mark.parametrize('temperature', [0.5, 3.0])
def test_local_selective_gradient_treats_the_attention_as_a_weight_unless_asked(temperature):
    """detach_attention: true: dL/dR_bcp = w · a_bp · sign(R_bcp − T_bcp) / (B·C·HW), a_bp constant (by loops);
    false: the derivative of the whole definition, attention included (central differences of the loop definition)."""
    students, teachers = lsfd_inputs()
    leaves = [s.clone().requires_grad_() for s in students]
    value = loss('KDLocalSelectiveFeatureLoss', temperature=temperature, loss_weight=2.0)(leaves, teachers)
    grads = torch.autograd.grad(value, leaves)
    for s, t, grad in zip(students, teachers, grads):
        batch, channels = s.shape[:2]
        distance = [[[abs(a - b) for a, b in zip(s[i, c].flatten().tolist(), t[i, c].flatten().tolist())]
                     for c in range(channels)] for i in range(batch)]
        weights = lsfd_weights_by_loops(distance, temperature)
        positions = len(weights[0])
        for i, c, p in itertools.product(range(batch), range(channels), range(positions)):
            sign = math.copysign(1.0, s[i, c].flatten()[p].item() - t[i, c].flatten()[p].item())
            expected = 2.0 * weights[i][p] * sign / (batch * channels * positions)
            assert grad[i, c].flatten()[p].item() == pytest.approx(expected, rel=1e-9)

    leaves = [s.clone().requires_grad_() for s in students]
    value = loss('KDLocalSelectiveFeatureLoss', temperature=temperature, detach_attention=False,
                 loss_weight=2.0)(leaves, teachers)
    grads = torch.autograd.grad(value, leaves)
    eps = 1e-6
    for tap, index in itertools.product(range(2), [(1, 0, 1, 1), (0, 1, 0, 0)]):
        shifted = []
        for step in (eps, -eps):
            moved = [s.clone() for s in students]
            moved[tap][index] += step
            shifted.append(lsfd_by_loops(moved, teachers, True, temperature, 2.0))
        difference = (shifted[0] - shifted[1]) / (2 * eps)
        assert grads[tap][index].item() == pytest.approx(difference, rel=1e-6, abs=1e-10)
    detached = [s.clone().requires_grad_() for s in students]
    plain = torch.autograd.grad(loss('KDLocalSelectiveFeatureLoss', temperature=temperature,
                                     loss_weight=2.0)(detached, teachers), detached)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, plain)), 'the attention carried no gradient'


def test_local_selective_loss_of_identical_features_is_zero_and_finite():
    """No difference anywhere: a 0/0 attention would be NaN; the weights are uniform and the loss and gradient 0."""
    feature = fixed(2, 3, 4, 4, seed=40)
    student = feature.clone().requires_grad_()
    value = loss('KDLocalSelectiveFeatureLoss', detach_attention=False)([student], [feature])
    value.backward()
    assert value.item() == 0 and torch.isfinite(student.grad).all()


@pytest.mark.parametrize('kwargs, words', [
    ({'temperature': 0}, 'temperature must be positive, got 0'),
    ({'temperature': -1.0}, 'temperature must be positive, got -1.0'),
    ({'selective': 'yes'}, "selective must be true or false, got 'yes'"),
    ({'detach_attention': 1}, 'detach_attention must be true or false, got 1'),
])
def test_local_selective_loss_refuses_bad_arguments_naming_them(kwargs, words):
    with pytest.raises(ValueError, match=f'KDLocalSelectiveFeatureLoss: {words}'):
        loss('KDLocalSelectiveFeatureLoss', **kwargs)


def test_local_selective_loss_refuses_unregressed_channels():
    with pytest.raises(ValueError, match='tap 0 .*add a regressor network_reg'):
        loss('KDLocalSelectiveFeatureLoss')([fixed(1, 3, 4, 4)], [fixed(1, 8, 4, 4)])


# ------------------------------------------------------------------------------------------------------------ FAKD
@pytest.mark.parametrize('batch', [1, 2])
def test_spatial_affinity_matches_the_loop_definition_and_the_dense_gradient_for_any_chunk(batch):
    # tap 0: 1x2x3x3 (or 2x2x3x3); tap 1: other channels and a non-square map, so chunks of 4 leave remainders
    students = [fixed(batch, 2, 3, 3, seed=1), fixed(batch, 4, 2, 3, seed=2)]
    teachers = [fixed(batch, 5, 3, 3, seed=3), fixed(batch, 3, 2, 3, seed=4)]
    by_loops = 10 * sum((affinity_by_loops(s) - affinity_by_loops(t)).abs().mean() for s, t in zip(students, teachers))
    assert all(torch.allclose(affinity_reference(f), affinity_by_loops(f), atol=1e-12) for f in students + teachers)
    dense_leaves = [s.clone().requires_grad_() for s in students]
    dense = spatial_affinity_reference(dense_leaves, teachers, 10)
    assert dense.item() == pytest.approx(by_loops.item(), rel=1e-12)
    dense_grads = torch.autograd.grad(dense, dense_leaves)
    assert all(g.abs().sum() > 0 for g in dense_grads)
    for chunk in (1, 4, 100):
        leaves = [s.clone().requires_grad_() for s in students]
        value = loss('KDSpatialAffinityLoss', chunk_size=chunk, loss_weight=10)(leaves, teachers)
        assert value.item() == pytest.approx(by_loops.item(), rel=1e-12), f'chunk_size {chunk}'
        grads = torch.autograd.grad(value, leaves)
        assert all(torch.allclose(g, d, rtol=1e-9, atol=1e-12) for g, d in zip(grads, dense_grads)), f'chunk {chunk}'


def test_spatial_affinity_of_identical_directions_is_zero():
    """A only sees directions: per-position rescaling of the features (any positive factor) leaves the loss at 0."""
    student = fixed(2, 3, 4, 4, seed=7)
    scale = fixed(2, 1, 4, 4, seed=8).abs() + 0.1
    fakd = loss('KDSpatialAffinityLoss', chunk_size=5)
    assert fakd([student], [student * scale]).item() == pytest.approx(0, abs=1e-12)
    assert fakd([student], [-student]).item() == pytest.approx(0, abs=1e-12)
    assert fakd([student], [student.flip(-1)]).item() > 0.1


# -------------------------------------------------------------------------------------------------------------- AT
def test_attention_transfer_matches_hand_computed_maps():
    # tap 0: student channels [[1, 2], [0, 1]] and [[1, 0], [0, 1]] -> mean of squares [[1, 2], [0, 1]],
    #   Q_S = (1, 2, 0, 1) / √6; teacher one channel [[0, 0], [0, 3]] -> squares [[0, 0], [0, 9]], Q_T = (0, 0, 0, 1).
    #   Σ(Q_S − Q_T)² = 1/6 + 4/6 + 0 + (1 − 1/√6)² = 2 − 2/√6; mean over the 4 positions: (2 − 2/√6) / 4.
    # tap 1 (1x2 map): student one channel (2, 0) -> Q_S = (1, 0); teacher two channels (0, 1), (0, 1) -> Q_T = (0, 1);
    #   mean (Q_S − Q_T)² = (1 + 1) / 2 = 1.
    # loss = loss_weight · β/2 · (tap 0 + tap 1) with β = 1000, loss_weight = 2.
    students = [torch.tensor([[[[1., 2.], [0., 1.]], [[1., 0.], [0., 1.]]]]), torch.tensor([[[[2., 0.]]]])]
    teachers = [torch.tensor([[[[0., 0.], [0., 3.]]]]), torch.tensor([[[[0., 1.]], [[0., 1.]]]])]
    expected = 2 * 1000 / 2 * ((2 - 2 / math.sqrt(6)) / 4 + 1)
    assert expected == pytest.approx(1295.876, abs=1e-3)
    at = loss('KDAttentionTransferLoss', beta=1000, loss_weight=2)
    assert at(students, teachers).item() == pytest.approx(expected, rel=1e-6)
    assert attention_transfer_reference(students, teachers, 1000, 2).item() == pytest.approx(expected, rel=1e-6)
    # Q is normalised per sample: a second sample that is the first times 3 (student) and 2 (teacher) has the same
    # maps, so the batch mean is unchanged; one norm over the whole batch would change it.
    batched = at([torch.cat([s, 3 * s]) for s in students], [torch.cat([t, 2 * t]) for t in teachers])
    assert batched.item() == pytest.approx(expected, rel=1e-6)


def test_attention_transfer_matches_the_reference_on_random_features():
    students = [fixed(2, 4, 5, 3, seed=9), fixed(2, 6, 2, 2, seed=10)]
    teachers = [fixed(2, 7, 5, 3, seed=11), fixed(2, 1, 2, 2, seed=12)]
    value = loss('KDAttentionTransferLoss', beta=1000, loss_weight=0.5)(students, teachers)
    assert value.item() == pytest.approx(attention_transfer_reference(students, teachers, 1000, 0.5).item(), rel=1e-12)


def test_attention_transfer_refuses_different_spatial_sizes_naming_the_tap():
    at = loss('KDAttentionTransferLoss')
    with pytest.raises(ValueError, match=r'tap 1 has student features \(1, 2, 4, 4\) and teacher features \(1, 3, 2'):
        at([fixed(1, 2, 4, 4)] * 2, [fixed(1, 3, 4, 4), fixed(1, 3, 2, 2)])


# ---------------------------------------------------------------------------------------------------------- FitNet
def test_hint_loss_is_mean_squared_error_summed_over_taps():
    students, teachers = [fixed(2, 3, 4, 4, seed=5), fixed(2, 3, 2, 2, seed=6)], [fixed(2, 3, 4, 4), fixed(2, 3, 2, 2)]
    by_hand = 2 * sum(sum((a - b)**2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / s.numel()
                      for s, t in zip(students, teachers))
    assert loss('KDHintLoss', loss_weight=2.0)(students, teachers).item() == pytest.approx(by_hand, rel=1e-12)
    assert hint_reference(students, teachers, 2.0).item() == pytest.approx(by_hand, rel=1e-12)


def test_hint_loss_refuses_unregressed_channels_and_unpaired_taps():
    with pytest.raises(ValueError, match='tap 0 .*add a regressor network_reg'):
        loss('KDHintLoss')([fixed(1, 3, 4, 4)], [fixed(1, 8, 4, 4)])
    with pytest.raises(ValueError, match='1 student taps but 2 teacher taps'):
        loss('KDHintLoss')([fixed(1, 3, 4, 4)], [fixed(1, 3, 4, 4), fixed(1, 3, 2, 2)])


def test_conv_regressor_maps_each_tap_to_the_teacher_channels():
    regressor = ARCH_REGISTRY.get('KDConvRegressor')(in_channels=[4, 6], out_channels=[8, 2], num_layers=5)
    outputs = regressor([torch.rand(2, 4, 5, 5), torch.rand(2, 6, 3, 3)])
    assert [tuple(o.shape) for o in outputs] == [(2, 8, 5, 5), (2, 2, 3, 3)]
    for stack, c_in, c_out in zip(regressor.regressors, [4, 6], [8, 2]):
        kinds = [type(m).__name__ for m in stack]
        assert kinds == ['Conv2d', 'PReLU'] * 4 + ['Conv2d']  # 5 convolutions, 4 PReLUs between them
        convs = [m for m in stack if isinstance(m, torch.nn.Conv2d)]
        assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == \
            [(c_in, c_out, (1, 1))] + [(c_out, c_out, (1, 1))] * 4
    with pytest.raises(ValueError, match='expected 2 features'):
        regressor([torch.rand(2, 4, 5, 5)])


def test_single_layer_regressor_is_one_1x1_convolution():
    regressor = ARCH_REGISTRY.get('KDConvRegressor')(in_channels=[3], out_channels=[5])
    (conv, ) = regressor.regressors[0]
    feature = fixed(2, 3, 4, 4, dtype=torch.float32)
    by_hand = torch.einsum('oc,bchw->bohw', conv.weight[:, :, 0, 0], feature) + conv.bias.view(1, 5, 1, 1)
    assert torch.allclose(regressor([feature])[0], by_hand, atol=1e-6)
    with pytest.raises(ValueError, match='same taps'):
        ARCH_REGISTRY.get('KDConvRegressor')(in_channels=[3, 3], out_channels=[5])
    with pytest.raises(ValueError, match='at least 1'):
        ARCH_REGISTRY.get('KDConvRegressor')(in_channels=[3], out_channels=[5], num_layers=0)


# ------------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize('name, kwargs, teacher_channels', [
    ('KDHintLoss', {}, 4),
    ('KDAttentionTransferLoss', {'beta': 1000}, 6),
    ('KDSpatialAffinityLoss', {'chunk_size': 7, 'loss_weight': 10}, 6),
    ('KDLocalSelectiveFeatureLoss', {'temperature': 2.0}, 4),
])
def test_student_features_get_finite_nonzero_gradients(name, kwargs, teacher_channels):
    students = [fixed(2, 4, 6, 6, seed=13, dtype=torch.float32).requires_grad_(),
                fixed(2, 4, 3, 3, seed=14, dtype=torch.float32).requires_grad_()]
    teachers = [fixed(2, teacher_channels, 6, 6, seed=15, dtype=torch.float32),
                fixed(2, teacher_channels, 3, 3, seed=16, dtype=torch.float32)]
    value = loss(name, **kwargs)(students, teachers)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    value.backward()
    for student in students:
        assert torch.isfinite(student.grad).all() and student.grad.abs().amax(dim=(1, 2, 3)).min() > 0
    assert all(t.grad is None for t in teachers)


@pytest.mark.parametrize('name', ['KDAttentionTransferLoss', 'KDSpatialAffinityLoss'])
def test_all_zero_features_give_a_finite_loss_and_gradient(name):
    """A dead tap (all zeros after a ReLU, or one zero position) must not turn the loss into NaN."""
    student = fixed(1, 3, 4, 4, seed=17, dtype=torch.float32)
    student[:, :, 0, 0] = 0
    student = torch.cat([student, torch.zeros_like(student)]).requires_grad_()
    value = loss(name)([student], [fixed(2, 3, 4, 4, seed=18, dtype=torch.float32)])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()
