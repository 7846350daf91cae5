"""SLKD's losses (Eq. 2-4, kd_losses/kd_slkd_loss.py) and Scale Conversion Module (kd_archs/kd_scale_conversion_arch.py)
against the printed formulas computed with explicit loops, and for where gradients flow.

The references take the BRISQUE/PIQE statistics from kd_nss_features (checked against piq and a loop-by-loop PIQE in
test_nss_features.py) and recompute everything the losses add: softplus, normalisation, Σ S log(S/T), reductions.
"""
import math

import pytest
import skimage.data
import torch
from basicsr.utils.registry import ARCH_REGISTRY

import kd_archs  # noqa: F401
import kd_losses  # noqa: F401
from kd_losses.kd_nss_features import brisque_features, piqe_features
from conftest import fixed, loss


def softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def kl_of_rows(student_row, teacher_row, positive, eps):
    """Σ_i p_i log(p_i / q_i), p and q the rows mapped by ``positive``, plus eps, divided by their sums."""
    p = [positive(v) + eps for v in student_row]
    q = [positive(v) + eps for v in teacher_row]
    p_sum, q_sum = sum(p), sum(q)
    return sum(a / p_sum * math.log((a / p_sum) / (b / q_sum)) for a, b in zip(p, q))


def statistics_kl_by_loops(student_stats, teacher_stats, loss_weight, eps):
    """loss_weight · Σ_levels mean_{n, c} KL(softplus-normalised student row ‖ teacher row), one row at a time."""
    total = 0.0
    for student, teacher in zip(student_stats, teacher_stats):
        batch, channels = student.shape[:2]
        level = 0.0
        for n in range(batch):
            for c in range(channels):
                level += kl_of_rows(student[n, c].flatten().tolist(), teacher[n, c].flatten().tolist(), softplus, eps)
        total += level / (batch * channels)
    return loss_weight * total


def textured(batch, channels, height, width, seed):
    """Channels cut from the camera photograph (textured, non-Gaussian) at random offsets, float64 in [0, 1]."""
    image = torch.from_numpy(skimage.data.camera() / 255.)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 512 - max(height, width), (batch, channels, 2), generator=generator).tolist()
    return torch.stack([torch.stack([image[i:i + height, j:j + width] for i, j in sample]) for sample in offsets])


# --------------------------------------------------------------------------------------------------- L_NC, Eq. 2
NATURALNESS_SETTINGS = [
    dict(),  # the defaults: loss_weight 1, eps 1e-8, C 1/255, 7 x 7 window, σ 7/6, 2 scales
    dict(loss_weight=0.1, eps=1e-2, mscn_c=1.0, kernel_size=5, kernel_sigma=1.0, num_scales=1),
]


@pytest.mark.parametrize('opt', NATURALNESS_SETTINGS)
def test_naturalness_loss_matches_the_printed_sum_over_levels(opt):
    students = [textured(2, 3, 12, 10, seed=1) + 0.05 * fixed(2, 3, 12, 10, seed=2), fixed(2, 2, 6, 8, seed=3)]
    teachers = [textured(2, 3, 12, 10, seed=4), textured(2, 2, 6, 8, seed=5)]
    stats_opt = dict(
        c=opt.get('mscn_c', 1 / 255),
        kernel_size=opt.get('kernel_size', 7),
        sigma=opt.get('kernel_sigma', 7 / 6),
        num_scales=opt.get('num_scales', 2))
    expected = statistics_kl_by_loops([brisque_features(s, **stats_opt) for s in students],
                                      [brisque_features(t, **stats_opt) for t in teachers], opt.get('loss_weight', 1.0),
                                      opt.get('eps', 1e-8))
    assert expected > 1e-3
    assert loss('KDNaturalnessLoss', **opt)(students, teachers).item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------------- L_ET, Eq. 3
EDGE_TEXTURE_SETTINGS = [
    dict(),  # the defaults: 16 x 16 blocks, segments of 6, thresholds 0.1, temperatures 0.01 / 0.01 / 0.05
    dict(
        loss_weight=0.1,
        eps=1e-2,
        mscn_c=1.0,
        kernel_size=5,
        kernel_sigma=1.0,
        block_size=8,
        segment_size=4,
        activity_threshold=0.2,
        edge_threshold=0.3,
        tau_activity=0.1,
        tau_edge=0.05,
        tau_noise=0.2),
]


@pytest.mark.parametrize('opt', EDGE_TEXTURE_SETTINGS)
def test_edge_texture_loss_matches_the_printed_sum_over_levels(opt):
    students = [textured(2, 2, 32, 16, seed=6) + 0.05 * fixed(2, 2, 32, 16, seed=7), fixed(2, 3, 16, 20, seed=8)]
    teachers = [textured(2, 2, 32, 16, seed=9), textured(2, 3, 16, 20, seed=10)]
    keys = dict(mscn_c='c', kernel_sigma='sigma')
    stats_opt = {keys.get(k, k): v for k, v in opt.items() if k not in ('loss_weight', 'eps')}
    expected = statistics_kl_by_loops([piqe_features(s, **stats_opt) for s in students],
                                      [piqe_features(t, **stats_opt) for t in teachers], opt.get('loss_weight', 1.0),
                                      opt.get('eps', 1e-8))
    assert expected > 1e-4
    assert loss('KDEdgeTextureLoss', **opt)(students, teachers).item() == pytest.approx(expected, rel=1e-10)


def test_edge_texture_loss_reports_the_share_of_the_students_saturated_gates():
    """Sample 0 of the student is flat: its MSCN map is 0, so in each of its four blocks activity is
    sigmoid(−0.1 / 0.01) ≈ 5e-5, distortion 1 − exp(−44 softplus(≈10)) ≈ 1 and noise sigmoid(≈−2 / 0.05) ≈ 4e-18, all
    three saturated. Sample 1 is textured: its gates a, d, n are read off its features (a, a·d, a·n). The teacher's
    gates are not counted."""
    sample = textured(1, 1, 32, 32, seed=13)
    student = torch.cat([torch.full_like(sample, 0.5), sample])
    features = piqe_features(sample)[0, 0]
    gates = torch.stack([features[1], features[2] / features[1], features[3] / features[1]])
    saturated = (torch.minimum(gates, 1 - gates) < 1e-3).sum().item()
    assert 0 < saturated < gates.numel()
    et = loss('KDEdgeTextureLoss')
    for teacher in (textured(2, 1, 32, 32, seed=14), torch.full_like(student, 0.5)):
        et([student], [teacher])
        assert list(et.saturation()) == ['et_gates_saturated']
        assert et.saturation()['et_gates_saturated'].item() == pytest.approx((3 * 4 + saturated) / 24)


@pytest.mark.parametrize('name', ['KDNaturalnessLoss', 'KDEdgeTextureLoss'])
def test_statistics_losses_are_zero_on_the_teacher_and_refuse_unpaired_levels(name):
    teachers = [textured(2, 2, 16, 16, seed=11), textured(2, 3, 16, 32, seed=12)]
    assert loss(name)(teachers, teachers).item() == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match='1 student taps but 2 teacher taps'):
        loss(name)(teachers[:1], teachers)
    with pytest.raises(ValueError, match=r'tap 1 has student features \(2, 2, 16, 32\)'):
        loss(name)([teachers[0], teachers[1][:, :2]], teachers)


# --------------------------------------------------------------------------------------------------- L_KL, Eq. 4
@pytest.mark.parametrize('loss_weight, eps', [(1.0, 1e-8), (0.5, 1e-3)])
def test_image_kl_loss_matches_the_printed_sum_in_its_printed_direction(loss_weight, eps):
    student = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64) - 0.1
    teacher = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    assert (student < 0).any()  # negative student pixels count as 0

    def by_loops(s, t):
        rows = [(s[n, c].flatten().tolist(), t[n, c].flatten().tolist()) for n in range(2) for c in range(3)]
        return loss_weight * sum(kl_of_rows(a, b, lambda v: max(v, 0.0), eps) for a, b in rows) / len(rows)

    kl = loss('KDImageKLLoss', loss_weight=loss_weight, eps=eps)
    assert kl(student, teacher).item() == pytest.approx(by_loops(student, teacher), rel=1e-10)
    # KL(S ‖ TA) as Eq. 4 prints it, not the reverse KL(TA ‖ S)
    assert abs(by_loops(student, teacher) - by_loops(teacher, student)) > 1e-3
    assert kl(teacher, teacher).item() == pytest.approx(0, abs=1e-14)
    with pytest.raises(ValueError, match=r'student \(2, 3, 5, 4\) and teacher \(2, 3, 4, 4\) must be NCHW images'):
        kl(student, teacher[:, :, :4])


# ----------------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_the_student_only_and_are_finite():
    cases = [
        (loss('KDNaturalnessLoss'), [textured(2, 2, 12, 12, seed=15),
                                     torch.full((2, 2, 8, 8),
                                                0.3)], [textured(2, 2, 12, 12, seed=16),
                                                        textured(2, 2, 8, 8, seed=17)]),
        (loss('KDEdgeTextureLoss'), [textured(1, 2, 16, 16, seed=18),
                                     torch.full(
                                         (1, 2, 16, 16),
                                         0.3)], [textured(1, 2, 16, 16, seed=19),
                                                 textured(1, 2, 16, 16, seed=20)]),
        (loss('KDImageKLLoss'), [textured(2, 3, 8, 8, seed=21)], [textured(2, 3, 8, 8, seed=22)]),
    ]
    for criterion, students, teachers in cases:
        students = [s.float().requires_grad_() for s in students]  # float32, as in training
        teachers = [t.float().requires_grad_() for t in teachers]
        value = criterion(students, teachers) if len(students) > 1 else criterion(students[0], teachers[0])
        value.backward()
        name = type(criterion).__name__
        assert torch.isfinite(value), name
        assert all(torch.isfinite(s.grad).all() for s in students), name
        assert students[0].grad.abs().sum() > 0, name
        assert all(t.grad is None for t in teachers), name


# ---------------------------------------------------------------------------------------------------------- SCM
def build_scm(**kwargs):
    return ARCH_REGISTRY.get('KDScaleConversion')(**kwargs)


def test_scale_conversion_maps_students_to_the_teacher_space_and_passes_teachers_unchanged():
    scm = build_scm(student_channels=[3, 5], teacher_channels=[6, 4]).double()
    students = [fixed(2, 3, 8, 8, seed=23), fixed(2, 5, 4, 6, seed=24)]
    teachers = [fixed(2, 6, 8, 8, seed=25), fixed(2, 4, 4, 6, seed=26)]
    unified_s, unified_t = scm(students, teachers)
    assert [tuple(u.shape) for u in unified_s] == [(2, 6, 8, 8), (2, 4, 4, 6)]
    assert all(u is t for u, t in zip(unified_t, teachers))
    # each level: a 1x1 convolution without bias, written out channel by channel
    for level, channels in ((0, 3), (1, 5)):
        weight = scm.projections[level].weight[:, :, 0, 0]
        by_hand = torch.stack([sum(weight[o, i] * students[level][:, i] for i in range(channels))
                               for o in range(len(weight))], dim=1)
        assert torch.allclose(unified_s[level], by_hand, rtol=0, atol=1e-12)
    assert [name for name, _ in scm.named_parameters()] == ['projections.0.weight', 'projections.1.weight']


def test_scale_conversion_refuses_mismatched_levels_and_channels():
    with pytest.raises(ValueError, match='must list the same levels'):
        build_scm(student_channels=[3, 5], teacher_channels=[6])
    scm = build_scm(student_channels=[3], teacher_channels=[6])
    with pytest.raises(ValueError, match='has 1 levels; got 2 student and 1 teacher features'):
        scm([torch.rand(1, 3, 4, 4)] * 2, [torch.rand(1, 6, 4, 4)])
    with pytest.raises(ValueError, match=r'level 0: expects 3 student and 6 teacher channels.*\(1, 5, 4, 4\)'):
        scm([torch.rand(1, 3, 4, 4)], [torch.rand(1, 5, 4, 4)])
    with pytest.raises(ValueError, match=r'level 0: student maps \(8, 8\) and teacher maps \(4, 4\) differ in size'):
        scm([torch.rand(1, 3, 8, 8)], [torch.rand(1, 6, 4, 4)])  # levels of two depths: refused, never resized


def test_scale_conversion_alone_cannot_drive_the_losses_to_zero():
    """Student fixed (noise), teacher textured: 20 Adam steps on the SCM alone lower L_NC + L_ET a little (the
    projection does learn) but it stays well above zero; a collapsed (all-zero) projection, the degenerate map a
    trainable teacher side would share, does not reach zero either, because the teacher side is fixed. Gradients
    reach the SCM's weights, never the teacher's features."""
    torch.manual_seed(0)
    scm = build_scm(student_channels=[4, 6], teacher_channels=[5, 3])
    students = [fixed(2, 4, 16, 16, seed=27, dtype=torch.float32), fixed(2, 6, 16, 16, seed=28, dtype=torch.float32)]
    teachers = [textured(2, 5, 16, 16, seed=29).float(), textured(2, 3, 16, 16, seed=30).float().requires_grad_()]
    naturalness, edge_texture = loss('KDNaturalnessLoss'), loss('KDEdgeTextureLoss')

    def total():
        unified_s, unified_t = scm(students, teachers)
        return naturalness(unified_s, unified_t) + edge_texture(unified_s, unified_t)

    optimizer = torch.optim.Adam(scm.parameters(), lr=1e-2)
    initial = total().item()
    for _ in range(20):
        optimizer.zero_grad()
        value = total()
        value.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scm.parameters())
    assert teachers[1].grad is None
    final = total().item()
    assert final < initial
    assert final > 0.5 * initial and final > 0.1, (initial, final)
    with torch.no_grad():
        for weight in scm.parameters():
            weight.zero_()
        assert total().item() > 0.5 * initial
