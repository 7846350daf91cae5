"""DCKD's degradation module (negatives, paper Eq. 4 / Tab. 6) and DUKD's label-consistency transform (DCKD*).

The degradations are random, so they are checked through what each kind must do to known inputs (statistics on
flat grey, impulses and checkerboards, scipy's filters with the kernel written out, the sizes a spy on
``F.interpolate`` records); the label-consistency operations against index formulas written with explicit loops.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.nn import functional as F

import kd_archs  # noqa: F401
import kd_losses  # noqa: F401
from kd_models.kd_degradations import DEFAULTS, KDDegradations
from kd_models.kd_label_consistency import (LABEL_CONSISTENCY_OPS, apply_label_consistency_ops,
                                            draw_label_consistency_ops, undo_label_consistency_ops)

TYPES = ('noise', 'blur', 'resize', 'mix')


def checkerboard(batch=2, channels=3, size=16, dtype=torch.float64):
    """1-pixel 0/1 checkerboard: the highest frequency an image can hold, and values at both ends of [0, 1]."""
    rows = torch.arange(size)
    board = ((rows[:, None] + rows[None, :]) % 2).to(dtype)
    return board.expand(batch, channels, size, size).clone()


def degrade(opt, lq, seed=0):
    torch.manual_seed(seed)
    return KDDegradations(opt)(lq)


def changed(out, lq):
    """Per copy: does any pixel of any sample differ from lq?"""
    return (out - lq).abs().flatten(1).amax(1) > 1e-9


# ------------------------------------------------------------------------------------------- degradations: common
def test_defaults_are_the_papers_and_released_values():
    d = KDDegradations()
    assert (d.num_negatives, d.include_clean_negative, d.kind) == (5, False, 'noise')
    assert d.noise_sigma == (1, 30) and d.gray_noise_prob == 0.5
    assert d.blur_kernel_sizes == [3, 5, 7, 9, 11] and d.blur_sigma == (0.1, 2.0)
    assert (d.resize_up_prob, d.resize_down_scale, d.resize_up_scale) == (0.25, (0.5, 1.0), (1.0, 1.5))
    assert d.resize_modes == ['area', 'bilinear', 'bicubic']


@pytest.mark.parametrize('kind', TYPES)
@pytest.mark.parametrize('include_clean', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_every_type_keeps_shape_range_dtype_and_changes_the_copies(kind, include_clean, dtype):
    lq = (torch.rand(3, 3, 12, 10, generator=torch.Generator().manual_seed(1)) > 0.5).to(dtype)  # 0/1, non-square
    out = degrade({'kind': kind, 'include_clean_negative': include_clean}, lq)
    assert out.shape == (5, 3, 3, 12, 10) and out.dtype == dtype and out.device == lq.device
    assert out.min() >= 0 and out.max() <= 1
    degraded = out[1:] if include_clean else out
    if include_clean:
        assert torch.equal(out[0], lq)  # the clean LQ is copy 0, untouched
    assert len(degraded) == 4 if include_clean else 5
    if kind == 'resize':  # an up factor below (H + 1) / H may leave one copy unchanged: see the resize tests
        assert changed(degraded, lq).any()
    else:
        assert changed(degraded, lq).all()


@pytest.mark.parametrize('kind', TYPES)
def test_draws_come_from_the_global_torch_rng(kind):
    lq = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first, again, other = (degrade({'kind': kind}, lq, seed) for seed in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize('kind', ['noise', 'blur', 'mix'])  # resize draws per copy: see the resize spy test
def test_copies_and_samples_get_their_own_draws(kind):
    lq = 0.5 + 0.2 * checkerboard(2, 1)  # two identical samples
    flat = degrade({'kind': kind}, lq).flatten(2)
    assert all(not torch.equal(flat[i], flat[j]) for i, j in itertools.combinations(range(5), 2))
    assert all(not torch.equal(flat[i, 0], flat[i, 1]) for i in range(5))


# ------------------------------------------------------------------------------------------------ noise
@pytest.mark.parametrize('sigma', [[1, 30], [10, 20], [5, 5]])
def test_noise_std_on_mid_grey_lies_in_the_sigma_range_and_covers_it(sigma):
    lq = torch.full((8, 3, 32, 32), 0.5, dtype=torch.float64)
    out = degrade({'noise_sigma': sigma}, lq)
    std = (out - lq).flatten(2).std(2) * 255  # (N, B): one sigma per copy and sample
    low, high = sigma
    assert std.min() > 0.9 * low and std.max() < 1.1 * high
    if low < high:  # 40 independent draws of U[low, high] reach both quarters of the range
        assert std.min() < low + (high - low) / 4 and std.max() > high - (high - low) / 4
    assert ((out - lq).flatten(2).mean(2).abs() * 255 < 5 * std / math.sqrt(32 * 32)).all()  # zero-mean noise


def test_grey_noise_is_the_same_on_all_channels_with_the_configured_probability():
    lq = torch.full((40, 3, 8, 8), 0.5, dtype=torch.float64)
    noise = degrade({'gray_noise_prob': 1.0}, lq) - lq
    assert torch.equal(noise[:, :, 0], noise[:, :, 1]) and torch.equal(noise[:, :, 0], noise[:, :, 2])
    noise = degrade({'gray_noise_prob': 0.0}, lq) - lq
    assert (noise[:, :, 0] != noise[:, :, 1]).flatten(2).any(2).all()
    noise = degrade({'gray_noise_prob': 0.5}, lq) - lq
    grey = (noise[:, :, 0] == noise[:, :, 1]).flatten(2).all(2) & (noise[:, :, 0] == noise[:, :, 2]).flatten(2).all(2)
    assert 0.35 < grey.double().mean() < 0.65  # 200 draws: 0.5 +- 4.2 standard deviations


def test_noise_is_clipped_to_the_unit_range():
    lq = torch.cat([torch.zeros(4, 3, 8, 8), torch.ones(4, 3, 8, 8)])
    out = degrade({'noise_sigma': [30, 30]}, lq)
    assert out.min() == 0 and out.max() == 1
    assert (out[:, :4] > 0).any() and (out[:, 4:] < 1).any()


# ------------------------------------------------------------------------------------------------ blur
def truncated_gaussian(size, sigma):
    taps = [math.exp(-t * t / (2 * sigma * sigma)) for t in range(-(size // 2), size // 2 + 1)]
    return np.array(taps) / sum(taps)


@pytest.mark.parametrize('size,sigma', [(3, 0.7), (5, 1.2), (11, 2.0)])
def test_blur_with_a_fixed_kernel_equals_scipy_separable_filtering_with_reflect_borders(size, sigma):
    lq = torch.rand(2, 3, 12, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = degrade({'kind': 'blur', 'blur_kernel_sizes': [size], 'blur_sigma': [sigma, sigma]}, lq)
    kernel = truncated_gaussian(size, sigma)
    expected = ndimage.correlate1d(lq.numpy(), kernel, axis=2, mode='mirror')  # torch 'reflect' = scipy 'mirror'
    expected = ndimage.correlate1d(expected, kernel, axis=3, mode='mirror')
    for copy in out:
        np.testing.assert_allclose(copy.numpy(), expected, rtol=0, atol=1e-12)


def test_blur_impulse_responses_are_anisotropic_truncated_gaussians_from_the_configured_sets():
    lq = torch.zeros(8, 2, 23, 23, dtype=torch.float64)
    lq[:, :, 11, 11] = 1
    out = degrade({'kind': 'blur'}, lq)
    assert torch.equal(out[:, :, 0], out[:, :, 1])  # one kernel per sample, shared by its channels
    sigmas, sizes = [], []
    for response in out[:, :, 0].reshape(-1, 23, 23):
        profiles = response.sum(1), response.sum(0)  # the vertical and the horizontal kernel
        assert torch.allclose(response, torch.outer(*profiles), rtol=0, atol=1e-15)  # separable: axis-aligned
        for profile in profiles:
            profile = profile.numpy()
            sigma = math.sqrt(-1 / (2 * math.log(profile[12] / profile[11])))  # from k(1) / k(0) = exp(-1/2σ²)
            assert 0.1 - 1e-9 <= sigma <= 2.0 + 1e-9 and profile.sum() == pytest.approx(1, abs=1e-12)
            sigmas.append(sigma)
            if sigma > 0.4:  # no tap inside the kernel underflows: the support is the kernel size
                size = 2 * max(abs(t - 11) for t in range(23) if profile[t] > 0) + 1
                expected = np.zeros(23)
                expected[11 - size // 2:12 + size // 2] = truncated_gaussian(size, sigma)
                np.testing.assert_allclose(profile, expected, rtol=0, atol=1e-12)
                sizes.append(size)
    sigmas = np.array(sigmas).reshape(-1, 2)
    assert (abs(sigmas[:, 0] - sigmas[:, 1]) > 1e-6).all()  # a sigma per axis
    assert sigmas.min() < 0.6 and sigmas.max() > 1.5
    assert set(sizes) == {3, 5, 7, 9, 11}


def test_blur_preserves_a_constant_and_smooths_a_checkerboard():
    flat = torch.full((4, 3, 12, 12), 0.3, dtype=torch.float64)
    assert torch.allclose(degrade({'kind': 'blur'}, flat), flat.expand(5, -1, -1, -1, -1), rtol=0, atol=1e-12)
    board = checkerboard(4, 3, 12)

    def variation(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(-3).sum(-1)

    out = degrade({'kind': 'blur'}, board)
    assert (variation(out) <= variation(board) + 1e-9).all()  # sigma near 0.1 on both axes barely blurs
    assert (out.flatten(2).mean(2) - 0.5).abs().max() < 0.05  # the mean stays (up to the borders)
    out = degrade({'kind': 'blur', 'blur_sigma': [1.0, 2.0]}, board)
    assert (variation(out) < 0.5 * variation(board)).all()


def test_blur_refuses_inputs_smaller_than_the_kernel_radius():
    with pytest.raises(ValueError, match=r'train\.negatives\.blur_kernel_sizes'):
        degrade({'kind': 'blur'}, torch.rand(1, 3, 5, 8))
    assert degrade({'kind': 'blur', 'blur_kernel_sizes': [3]}, torch.rand(1, 3, 5, 8)).shape == (5, 1, 3, 5, 8)


# ------------------------------------------------------------------------------------------------ resize
def test_resize_by_one_half_turns_a_checkerboard_flat_grey():
    board = checkerboard(2, 3, 16)
    opt = dict(kind='resize', resize_up_prob=0.0, resize_down_scale=[0.5, 0.5], resize_modes=['area', 'bilinear'])
    out = degrade(opt, board)
    assert out.shape == (5, 2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize('opt', [{'resize_up_prob': 0.0}, {'resize_up_prob': 1.0, 'resize_up_scale': [1.5, 1.5]}])
def test_resize_changes_a_checkerboard_and_keeps_shape_and_range(opt):
    board = checkerboard(2, 3, 16)
    out = degrade({'kind': 'resize', 'num_negatives': 8, **opt}, board)
    assert out.shape == (8, 2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert changed(out, board).all()


def test_resize_draws_factors_directions_and_modes_as_configured(monkeypatch):
    calls = []

    def spy(images, size, mode, align_corners):
        calls.append((tuple(images.shape[2:]), tuple(size), mode, align_corners))
        return interpolate(images, size=size, mode=mode, align_corners=align_corners)

    interpolate = F.interpolate
    monkeypatch.setattr(F, 'interpolate', spy)
    lq = torch.rand(1, 1, 64, 40, dtype=torch.float64)
    degrade({'kind': 'resize', 'num_negatives': 600}, lq)
    assert len(calls) == 1200
    away, back = calls[0::2], calls[1::2]
    assert all(c[0] == (64, 40) for c in away) and all(c[1] == (64, 40) for c in back)
    factors = np.array([c[1][0] / 64 for c in away])
    assert all(c[1][1] in (int(40 * f), int(40 * f) + 1) for c, f in zip(away, factors))  # one factor, both axes
    assert factors.min() >= 0.5 and factors.max() <= 1.5
    up = factors >= 1  # a down factor < 1 gives at most 63 rows
    assert 0.19 < up.mean() < 0.31  # p = 0.25, 600 draws: +- 3.4 standard deviations
    assert factors[up].max() > 1.4 and factors[~up].min() < 0.55
    for mode in ('area', 'bilinear', 'bicubic'):
        assert 0.27 < np.mean([c[2] == mode for c in calls]) < 0.4  # 1200 draws of 3 modes
    assert all(c[3] == (None if c[2] == 'area' else False) for c in calls)


# ------------------------------------------------------------------------------------------------ mix
def test_mix_adds_the_noise_at_the_resized_size_before_resizing_back():
    lq = torch.full((4, 3, 16, 16), 0.5, dtype=torch.float64)  # a flat image: the blur is a no-op
    opt = dict(
        kind='mix', resize_up_prob=0.0, resize_down_scale=[0.5, 0.5], resize_modes=['area'], noise_sigma=[20, 20])
    noise = degrade(opt, lq) - lq
    blocks = noise.unflatten(3, (8, 2)).unflatten(5, (8, 2))  # (N, B, C, 8, 2, 8, 2)
    assert torch.equal(blocks, blocks[..., :1, :, :1].expand_as(blocks))  # noise drawn at 8x8, area-upsampled
    assert abs(noise.std().item() * 255 - 20) < 2


def test_mix_blurs_resizes_and_adds_noise():
    board = checkerboard(4, 3, 16)
    out = degrade({'kind': 'mix', 'blur_sigma': [1.0, 2.0], 'resize_modes': ['area']}, board)
    assert out.shape == (5, 4, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert ((out - board).abs().flatten(1).mean(1) > 0.2).all()


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize('opt,key', [
    (dict(num_neg=4), 'num_neg'),
    (dict(kind='jpeg'), 'kind'),
    (dict(num_negatives=0), 'num_negatives'),
    (dict(num_negatives=2.0), 'num_negatives'),
    (dict(num_negatives=1, include_clean_negative=True), 'num_negatives'),
    (dict(include_clean_negative='yes'), 'include_clean_negative'),
    (dict(noise_sigma=[30, 1]), 'noise_sigma'),
    (dict(noise_sigma=[1]), 'noise_sigma'),
    (dict(gray_noise_prob=1.5), 'gray_noise_prob'),
    (dict(blur_kernel_sizes=[3, 4]), 'blur_kernel_sizes'),
    (dict(blur_kernel_sizes=[]), 'blur_kernel_sizes'),
    (dict(blur_sigma=[0, 2]), 'blur_sigma'),
    (dict(resize_up_prob=-0.1), 'resize_up_prob'),
    (dict(resize_down_scale=[0.5, 1.2]), 'resize_down_scale'),
    (dict(resize_up_scale=[0.9, 1.5]), 'resize_up_scale'),
    (dict(resize_modes=['lanczos']), 'resize_modes'),
])
def test_bad_options_are_refused_with_their_option_path(opt, key):
    with pytest.raises(ValueError, match=rf'train\.negatives\.{key}\b'):
        KDDegradations(opt)
    with pytest.raises(ValueError, match=rf'train\.dckd\.negatives\.{key}\b'):
        KDDegradations(opt, option_path='train.dckd.negatives')


def test_every_default_is_a_valid_option_and_bad_inputs_are_refused():
    assert KDDegradations(dict(DEFAULTS)).opt == DEFAULTS
    with pytest.raises(ValueError, match='B, C, H, W'):
        KDDegradations()(torch.rand(3, 8, 8))


# ------------------------------------------------------------------------------------ label consistency (DCKD*)
ALL_COMBINATIONS = torch.tensor(list(itertools.product([False, True], repeat=4)))  # (16, 4): one per sample


def dyadic(*shape, seed=0):
    """Values k/256: 1 - x is exact, so invert-then-invert is the identity bit for bit."""
    return torch.randint(0, 257, shape, generator=torch.Generator().manual_seed(seed)).double() / 256


def transformed_by_loops(image, combination):
    """One (C, H, W) image through the ops of ``combination`` in the order invert, flip_h, flip_w, transpose."""
    channels, height, width = image.shape
    x = [[[image[c, i, j].item() for j in range(width)] for i in range(height)] for c in range(channels)]
    invert, flip_h, flip_w, transpose = combination
    if invert:
        x = [[[1 - x[c][i][j] for j in range(width)] for i in range(height)] for c in range(channels)]
    if flip_h:
        x = [[[x[c][height - 1 - i][j] for j in range(width)] for i in range(height)] for c in range(channels)]
    if flip_w:
        x = [[[x[c][i][width - 1 - j] for j in range(width)] for i in range(height)] for c in range(channels)]
    if transpose:
        x = [[[x[c][j][i] for j in range(height)] for i in range(width)] for c in range(channels)]
    return torch.tensor(x, dtype=torch.float64)


def test_each_op_and_their_order_on_a_painted_image():
    assert LABEL_CONSISTENCY_OPS == ('invert', 'flip_h', 'flip_w', 'transpose')
    painted = (torch.arange(16 * 2 * 4 * 4, dtype=torch.float64) / 256).view(16, 2, 4, 4)  # every pixel distinct
    out = apply_label_consistency_ops(painted, ALL_COMBINATIONS)
    for b, combination in enumerate(ALL_COMBINATIONS.tolist()):
        assert torch.equal(out[b], transformed_by_loops(painted[b], combination)), combination
    # flip_h then transpose differs from transpose then flip_h: the order above is really checked
    once = transformed_by_loops(painted[0], [False, True, False, True])
    assert not torch.equal(once, transformed_by_loops(painted[0], [False, False, False, True]).flip(-2))


@pytest.mark.parametrize('height,width', [(6, 6), (5, 7)])
def test_undo_inverts_apply_exactly_for_all_16_combinations_also_on_upscaled_outputs(height, width):
    ops = ALL_COMBINATIONS.clone()
    if height != width:
        ops[:, 3] = False  # no transpose for non-square batches
    images = dyadic(16, 3, height, width)
    transformed = apply_label_consistency_ops(images, ops)
    assert torch.equal(undo_label_consistency_ops(transformed, ops), images)
    # an "SR teacher" that commutes with the ops: nearest-neighbour x3; the undo works at the larger size
    teacher_out = F.interpolate(transformed, scale_factor=3, mode='nearest')
    expected = F.interpolate(images, scale_factor=3, mode='nearest')
    assert torch.equal(undo_label_consistency_ops(teacher_out, ops), expected)
    changes = (transformed != images).flatten(1).any(1)
    assert not changes[0] and changes[ops.any(1)].all()  # only the empty combination leaves the image as it was


@pytest.mark.parametrize('prob', [0.5, 0.2])
def test_draws_have_the_configured_frequency_independently_per_op(prob):
    torch.manual_seed(0)
    ops = draw_label_consistency_ops(torch.zeros(4000, 1, 2, 2), prob)
    assert ops.shape == (4000, 4) and ops.dtype == torch.bool
    assert (ops.double().mean(0) - prob).abs().max() < 0.03  # sd 0.0079 (p = 0.5)
    counts = torch.stack([(ops == c).all(1).sum() for c in ALL_COMBINATIONS])
    expected = 4000 * torch.tensor(
        [math.prod(prob if bit else 1 - prob for bit in c) for c in ALL_COMBINATIONS.tolist()])
    assert ((counts - expected).abs() < 4 * expected.sqrt() + 5).all()
    torch.manual_seed(0)
    assert torch.equal(draw_label_consistency_ops(torch.zeros(4000, 1, 2, 2), prob), ops)  # global RNG


def test_probability_zero_and_one():
    assert not draw_label_consistency_ops(torch.zeros(50, 3, 4, 4), 0.0).any()
    assert draw_label_consistency_ops(torch.zeros(50, 3, 4, 4), 1.0).all()


def test_non_square_batches_never_draw_transpose_and_refuse_it():
    ops = draw_label_consistency_ops(torch.zeros(200, 3, 4, 6), 1.0)
    assert ops[:, :3].all() and not ops[:, 3].any()
    images = dyadic(2, 3, 4, 6)
    bad = torch.tensor([[False, False, False, True], [False] * 4])
    with pytest.raises(ValueError, match='non-square'):
        apply_label_consistency_ops(images, bad)
    with pytest.raises(ValueError, match='non-square'):
        undo_label_consistency_ops(F.interpolate(images, scale_factor=2), bad)


def test_label_consistency_refuses_bad_arguments():
    images = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match='prob'):
        draw_label_consistency_ops(images, 1.5)
    with pytest.raises(ValueError, match='B, C, H, W'):
        draw_label_consistency_ops(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r'shape \(2, 4\)'):
        apply_label_consistency_ops(images, torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'shape \(2, 4\)'):
        undo_label_consistency_ops(images, torch.zeros(2, 4))
