"""FitNet, AT and FAKD losses against direct computations of their formulas on fixed inputs."""
import math

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY


def fixed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


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


@pytest.mark.parametrize('batch', [1, 2])
def test_spatial_affinity_matches_the_loop_definition_for_any_chunk(batch):
    students = [fixed(batch, 2, 3, 3, seed=1), fixed(batch, 4, 2, 3, seed=2)]
    teachers = [fixed(batch, 5, 3, 3, seed=3), fixed(batch, 3, 2, 3, seed=4)]
    expected = 10 * sum((affinity_by_loops(s) - affinity_by_loops(t)).abs().mean() for s, t in zip(students, teachers))
    gradients = []
    for chunk in (1, 4, 100):
        loss_fn = LOSS_REGISTRY.get('KDSpatialAffinityLoss')(chunk_size=chunk, loss_weight=10)
        leaves = [s.clone().requires_grad_() for s in students]
        loss = loss_fn(leaves, teachers)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
        gradients.append(torch.autograd.grad(loss, leaves))
    for other in gradients[1:]:
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(gradients[0], other))
    assert all(g.abs().sum() > 0 for g in gradients[0])


def test_attention_transfer_matches_a_hand_computed_map():
    student = torch.tensor([[[[1., 2.], [0., 1.]], [[1., 0.], [0., 1.]]]])  # mean of squares: [[1, 2], [0, 1]]
    teacher = torch.tensor([[[[0., 0.], [0., 3.]]]])  # one channel: squares [[0, 0], [0, 9]]
    q_student = torch.tensor([1., 2., 0., 1.]) / math.sqrt(6)
    q_teacher = torch.tensor([0., 0., 0., 1.])
    expected = 1000 / 2 * ((q_student - q_teacher)**2).mean()
    loss = LOSS_REGISTRY.get('KDAttentionTransferLoss')(beta=1000)([student], [teacher])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_transfer_refuses_different_spatial_sizes():
    with pytest.raises(ValueError, match='tap 1'):
        LOSS_REGISTRY.get('KDAttentionTransferLoss')()([fixed(1, 2, 4, 4)] * 2, [fixed(1, 3, 4, 4), fixed(1, 3, 2, 2)])


def test_hint_loss_is_mean_squared_error_summed_over_taps():
    students, teachers = [fixed(2, 3, 4, 4, seed=5), fixed(2, 3, 2, 2, seed=6)], [fixed(2, 3, 4, 4), fixed(2, 3, 2, 2)]
    expected = sum(((s - t)**2).sum() / s.numel() for s, t in zip(students, teachers))
    loss = LOSS_REGISTRY.get('KDHintLoss')(loss_weight=2.0)(students, teachers)
    assert loss.item() == pytest.approx(2 * expected.item(), rel=1e-9)
    with pytest.raises(ValueError, match='network_reg'):
        LOSS_REGISTRY.get('KDHintLoss')()([fixed(1, 3, 4, 4)], [fixed(1, 8, 4, 4)])
    with pytest.raises(ValueError, match='1 student taps but 2 teacher taps'):
        LOSS_REGISTRY.get('KDHintLoss')()([fixed(1, 3, 4, 4)], teachers)


def test_conv_regressor_maps_each_tap_to_the_teacher_channels():
    regressor = ARCH_REGISTRY.get('KDConvRegressor')(in_channels=[4, 6], out_channels=[8, 2], num_layers=5)
    outputs = regressor([torch.rand(2, 4, 5, 5), torch.rand(2, 6, 3, 3)])
    assert [tuple(o.shape) for o in outputs] == [(2, 8, 5, 5), (2, 2, 3, 3)]
    layers = list(regressor.regressors[0])
    assert sum(isinstance(m, torch.nn.Conv2d) for m in layers) == 5
    assert sum(isinstance(m, torch.nn.PReLU) for m in layers) == 4
    assert all(m.kernel_size == (1, 1) for m in layers if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ValueError, match='expected 2 features'):
        regressor([torch.rand(2, 4, 5, 5)])
