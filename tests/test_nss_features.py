"""SLKD's differentiable BRISQUE/PIQE features (kd_losses/kd_nss_features.py) against piq's BRISQUE, a loop-by-loop
PIQE written from the PIQE paper, closed-form GGD moments, and for finite gradients on flat, random and real maps.

Needs piq (test-only oracle) and scikit-image's sample photographs.
"""
import math

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import torch
import torch.nn.functional as F

from piq.brisque import _aggd_parameters, _ggd_parameters, _natural_scene_statistics  # test-only oracle
from piq.functional import gaussian_filter, imresize

import kd_archs  # noqa: F401
import kd_losses  # noqa: F401
from conftest import fixed
from kd_losses.kd_nss_features import (BRISQUE_SHIFTS, aggd_fit, aggd_mean, brisque_features, ggd_fit, mscn,
                                       piqe_features, solve_shape)

SHAPES = [0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 10.0]


def camera():
    """scikit-image's 512 x 512 grey photograph in [0, 1], (1, 1, 512, 512) float64."""
    return torch.from_numpy(skimage.data.camera() / 255.)[None, None]


def shape_ratio(alpha):
    """ρ(α) = Γ(2/α)² / (Γ(1/α) Γ(3/α)) with the math module."""
    return math.exp(2 * math.lgamma(2 / alpha) - math.lgamma(1 / alpha) - math.lgamma(3 / alpha))


# ------------------------------------------------------------------------------------------------- shape solver
def test_shape_solver_inverts_the_moment_ratio_over_brisques_range():
    ratios = torch.tensor([shape_ratio(a) for a in SHAPES], dtype=torch.float64)
    assert solve_shape(ratios).tolist() == pytest.approx(SHAPES, rel=1e-10)
    assert solve_shape(ratios.float()).tolist() == pytest.approx(SHAPES, rel=1e-4)
    # outside [ρ(0.2), ρ(10)] the shape stops at the ends of the range, with zero gradient
    outside = torch.tensor([1e-6, 0.7499], dtype=torch.float64, requires_grad=True)
    alpha = solve_shape(outside)
    assert alpha.tolist() == pytest.approx([0.2, 10.0], rel=1e-10)
    alpha.sum().backward()
    assert outside.grad.tolist() == [0, 0]


def test_shape_solver_gradient_is_the_implicit_derivative():
    """dα/dρ = 1 / ρ'(α), checked against finite differences (gradcheck) and against a central difference of the
    closed form ρ(α) written with the math module."""
    ratios = torch.tensor([shape_ratio(a) for a in (0.4, 1.0, 2.0, 6.0)], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solve_shape, (ratios, ), eps=1e-7, atol=1e-6)
    grad, = torch.autograd.grad(solve_shape(ratios).sum(), ratios)
    for alpha, g in zip((0.4, 1.0, 2.0, 6.0), grad.tolist()):
        h = 1e-6 * alpha
        assert g == pytest.approx(2 * h / (shape_ratio(alpha + h) - shape_ratio(alpha - h)), rel=1e-6)


def ggd_magnitudes(alpha, scale, size, rng):
    """|x| of GGD samples with shape α and scale β: β G^(1/α), G ~ Gamma(1/α, 1)."""
    return scale * rng.gamma(1 / alpha, size=size)**(1 / alpha)


@pytest.mark.parametrize('alpha', [0.6, 1.0, 2.0])
def test_ggd_and_aggd_fits_recover_the_parameters_of_known_samples(alpha):
    """200,000 samples of a GGD (scale 1) and of an AGGD (left scale 0.5, right scale 1.5) of shape α: the fits give
    α, the sample's mean squares exactly, and an AGGD mean η close to the sample mean."""
    rng = np.random.default_rng(int(alpha * 10))
    n = 200_000
    symmetric = torch.from_numpy(ggd_magnitudes(alpha, 1.0, n, rng) * rng.choice([-1.0, 1.0], n))
    ratio, variance = ggd_fit(symmetric)
    shape = solve_shape(ratio)
    assert shape.item() == pytest.approx(alpha, rel=0.02)
    assert variance.item() == pytest.approx(symmetric.pow(2).mean().item(), rel=1e-12)

    left_scale, right_scale = 0.5, 1.5
    left_side = rng.random(n) < left_scale / (left_scale + right_scale)  # the AGGD density is continuous at 0
    magnitudes = np.where(left_side, ggd_magnitudes(alpha, left_scale, n, rng),
                          ggd_magnitudes(alpha, right_scale, n, rng))
    skewed = torch.from_numpy(np.where(left_side, -magnitudes, magnitudes))
    ratio, left, right = aggd_fit(skewed)
    shape = solve_shape(ratio)
    mean = aggd_mean(shape, left, right)
    assert shape.item() == pytest.approx(alpha, rel=0.03)
    assert left.item() == pytest.approx(skewed[skewed < 0].pow(2).mean().item(), rel=1e-12)
    assert right.item() == pytest.approx(skewed[skewed > 0].pow(2).mean().item(), rel=1e-12)
    second_moment = math.gamma(3 / alpha) / math.gamma(1 / alpha)  # E[x²] of a GGD of scale 1
    assert left.item() == pytest.approx(left_scale**2 * second_moment, rel=0.03)
    assert right.item() == pytest.approx(right_scale**2 * second_moment, rel=0.03)
    assert mean.item() == pytest.approx(skewed.mean().item(), rel=0.03)


# ----------------------------------------------------------------------------------------------------------- MSCN
def reference_mscn_255(x255, kernel_size=7, sigma=7 / 6):
    """BRISQUE's MSCN at [0, 255] with piq's Gaussian window, replicate padding and C = 1."""
    window = gaussian_filter(kernel_size, sigma, dtype=x255.dtype).view(1, 1, kernel_size, kernel_size)
    pad = [kernel_size // 2] * 4
    mu = F.conv2d(F.pad(x255, pad, mode='replicate'), window)
    second = F.conv2d(F.pad(x255 * x255, pad, mode='replicate'), window)
    return (x255 - mu) / ((second - mu * mu).abs().sqrt() + 1)


@pytest.mark.parametrize('kernel_size, sigma', [(7, 7 / 6), (5, 1.0)])
def test_mscn_matches_brisque_at_255_and_is_blind_to_offsets(kernel_size, sigma):
    image = camera()[..., 100:228, 150:278]
    window = dict(kernel_size=kernel_size, sigma=sigma)
    reference = reference_mscn_255(image * 255, **window)
    # eps = 1e-10 under the root of the local variance (in the units of the data) moves flat pixels by < 1e-5
    assert torch.allclose(mscn(image, c=1 / 255, **window), reference, atol=1e-5, rtol=0)
    assert torch.allclose(mscn(image * 255, c=1, **window), reference, atol=1e-8, rtol=0)
    assert torch.allclose(mscn(image + 100, c=1 / 255, **window), reference, atol=1e-5, rtol=0)
    assert torch.allclose(mscn(image, c=1 / 255, eps=0, **window), reference, atol=1e-9, rtol=0)
    assert not torch.allclose(mscn(image, c=1 / 255, **window), mscn(image, c=10 / 255, **window), atol=1e-2)


@pytest.mark.parametrize('value', [0.0, 0.37, 1e3])
def test_mscn_of_a_constant_map_is_zero_and_features_take_their_flat_values(value):
    flat = torch.full((2, 3, 9, 11), value, dtype=torch.float64)
    assert mscn(flat).abs().max().item() < 1e-12
    features = brisque_features(flat)
    gaussian_shape = torch.tensor([2., 0.] + [2., 0., 0., 0.] * 4, dtype=torch.float64).repeat(2)
    assert torch.allclose(features, gaussian_shape.expand_as(features), atol=1e-9)
    blocks = piqe_features(flat)
    assert blocks.shape == (2, 3, 4, 1, 1)
    assert blocks[:, :, 0].abs().max().item() < 1e-12  # variance 0, so inactive: every gated feature ~0
    assert blocks[:, :, 1:].max().item() < 1e-3


@pytest.mark.parametrize('kind', ['constant', 'random', 'image'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_features_have_finite_gradients_everywhere(kind, dtype):
    if kind == 'constant':
        x = torch.full((1, 2, 16, 20), 0.5, dtype=dtype)
    elif kind == 'random':
        x = fixed(1, 2, 16, 20, seed=1, dtype=dtype)
    else:
        x = camera()[..., 200:232, 240:280].to(dtype).expand(1, 2, 32, 40)
    x = x.clone().requires_grad_()
    total = brisque_features(x).sum() + piqe_features(x).sum()
    grad, = torch.autograd.grad(total, x)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    if kind != 'constant':
        assert grad.abs().sum() > 0


# -------------------------------------------------------------------------------------------- BRISQUE against piq
def valid_products(m, shift):
    """m(i, j) m(i + di, j + dj) over the pairs inside the map, built with roll and a crop of the wrapped pairs."""
    di, dj = shift
    product = m * torch.roll(m, shifts=(-di, -dj), dims=(-2, -1))
    height, width = m.shape[-2:]
    columns = slice(0, width - 1) if dj == 1 else slice(1, width) if dj == -1 else slice(0, width)
    return product[..., :height - di, columns]


def piq_block_features(x255):
    """BRISQUE's 18 features of one scale from piq's estimators (table look-up for the shapes), fed the MSCN map
    with replicate padding and the neighbour products without wrap-around."""
    m = reference_mscn_255(x255)
    alpha, sigma = _ggd_parameters(m)
    features = [alpha, sigma**2]
    for shift in BRISQUE_SHIFTS:
        alpha, left, right = _aggd_parameters(valid_products(m, shift))
        scale = torch.exp(torch.lgamma(2 / alpha) - (torch.lgamma(1 / alpha) + torch.lgamma(3 / alpha)) / 2)
        features += [alpha, (right - left) * scale, left**2, right**2]
    return torch.stack(features, dim=-1)


SHAPE_INDICES = [0, 2, 6, 10, 14]  # α of the GGD and of the four AGGDs, within a scale of 18 features


def split_shapes(features):
    """(shapes, the other features) of a vector of 36 features."""
    shape_mask = torch.zeros(36, dtype=torch.bool)
    shape_mask[SHAPE_INDICES] = True
    shape_mask[[18 + i for i in SHAPE_INDICES]] = True
    return features[..., shape_mask], features[..., ~shape_mask]


def test_brisque_features_agree_with_piq():
    """On the camera photograph (512 x 512).

    1. Against piq's estimators fed the same MSCN maps and products (replicate padding, no wrap-around) of the full
       image and of our half-resolution image: shapes within 1e-3 (piq picks the nearest entry of a table with
       step 1e-3; measured 4.7e-4), the other features within 5e-5 (the AGGD mean inherits the shape's error;
       variances agree to 2e-6, the effect of eps).
    2. Our half-resolution image (torch's antialiased bicubic) is MATLAB's imresize(·, 0.5) as piq computes it,
       within 1e-4 grey levels away from a 4-pixel border.
    3. Against piq's own ``_natural_scene_statistics`` on its imresize (zero padding, which gives the 3-pixel border
       large MSCN values, circular shifts, MATLAB's resize at the border): shapes within 0.06, the other features
       within 2e-3 (measured 0.055 and 1.6e-3).
    """
    image = camera()
    ours = brisque_features(image)[0, 0]
    half = F.interpolate(image, size=(256, 256), mode='bicubic', antialias=True)
    blocks = torch.cat([piq_block_features(image * 255), piq_block_features(half * 255)], dim=-1)[0]  # piq: (N, 18)
    (shapes, others), (ref_shapes, ref_others) = split_shapes(ours), split_shapes(blocks)
    assert (shapes - ref_shapes).abs().max().item() < 1e-3
    assert (others - ref_others).abs().max().item() < 5e-5

    matlab_half = imresize(image * 255, sizes=(256, 256))
    assert (half * 255 - matlab_half)[..., 4:-4, 4:-4].abs().max().item() < 1e-4

    piq_features = torch.cat([_natural_scene_statistics(image * 255),
                              _natural_scene_statistics(matlab_half)], dim=-1)[0]
    ref_shapes, ref_others = split_shapes(piq_features)
    assert (shapes - ref_shapes).abs().max().item() < 0.06
    assert (others - ref_others).abs().max().item() < 2e-3


def test_brisque_features_are_per_channel_and_refuse_tiny_maps():
    x = fixed(2, 3, 12, 10, seed=4)
    together = brisque_features(x)
    assert together.shape == (2, 3, 36)
    assert torch.allclose(together[1, 2], brisque_features(x[1:2, 2:3])[0, 0], rtol=0, atol=1e-12)
    assert brisque_features(x, num_scales=1).shape == (2, 3, 18)
    assert brisque_features(x.bfloat16()).dtype == piqe_features(x.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match=r'\[1, 1\] at scale 4.*lower num_scales'):
        brisque_features(x, num_scales=4)
    with pytest.raises(ValueError, match='x must be NCHW'):
        brisque_features(x[0])


# ----------------------------------------------------------------------------------------- PIQE, hard, with loops
def hard_piqe(image, block_size=16, segment_size=6, activity_threshold=0.1, edge_threshold=0.1):
    """PIQE's block decisions on one grey [0, 1] image (a numpy array), as the PIQE paper states them, one block and
    one segment at a time: MSCN with a 7 x 7 Gaussian window (σ 7/6, replicate borders, C = 1 on [0, 255]) of the
    image padded by replicating its last row/column to multiples of 16; per 16 x 16 block its variance v, activity
    v > T_A; noticeable distortion if some run of 6 pixels along one of the four edges has standard deviation below
    T_E; noise if √v > 2β, β = |√v − r| / max(√v, r), r = std(two centre columns) / std(the other columns).
    Returns (variance, activity, activity and distortion, activity and noise) per block, each (H_blocks, W_blocks).
    """
    height, width = image.shape
    padded = np.pad(image * 255, ((0, -height % block_size), (0, -width % block_size)), mode='edge')
    coords = np.arange(7) - 3
    window = np.exp(-(coords[:, None]**2 + coords[None, :]**2) / (2 * (7 / 6)**2))
    window /= window.sum()
    mu = scipy.ndimage.correlate(padded, window, mode='nearest')
    sigma = np.sqrt(np.abs(scipy.ndimage.correlate(padded * padded, window, mode='nearest') - mu * mu))
    coefficients = (padded - mu) / (sigma + 1)
    rows, cols = padded.shape[0] // block_size, padded.shape[1] // block_size
    out = np.zeros((4, rows, cols))
    middle = block_size // 2
    for i in range(rows):
        for j in range(cols):
            block = coefficients[i * block_size:(i + 1) * block_size, j * block_size:(j + 1) * block_size]
            variance = np.var(block, ddof=1)
            active = variance > activity_threshold
            distorted = False
            for edge in (block[0, :], block[:, -1], block[-1, :], block[:, 0]):
                for start in range(block_size - segment_size + 1):
                    if np.std(edge[start:start + segment_size], ddof=1) < edge_threshold:
                        distorted = True
            centre = np.concatenate([block[:, middle - 1], block[:, middle]])
            surround = np.delete(block, [middle - 1, middle], axis=1)
            ratio = np.std(centre, ddof=1) / np.std(surround, ddof=1)
            block_std = math.sqrt(variance)
            beta = abs(block_std - ratio) / max(block_std, ratio)
            out[:, i, j] = variance, active, active and distorted, active and block_std > 2 * beta
    return out


def piqe_test_image():
    """A 56 x 72 crop of the camera photograph (padded to 64 x 80 inside PIQE) with added noise on its right part
    and a flat patch on its lower left, so that active, inactive, distorted and noisy blocks all occur."""
    image = skimage.data.camera()[180:236, 200:272] / 255.
    rng = np.random.default_rng(0)
    image[:, 40:] += 0.08 * rng.standard_normal((56, 32))
    image[40:, :24] = 0.5
    return image


PIQE_SETTINGS = [dict(), dict(block_size=8, segment_size=4, activity_threshold=0.2, edge_threshold=0.3)]


@pytest.mark.parametrize('opt', PIQE_SETTINGS)
def test_soft_piqe_criteria_become_the_hard_ones_as_temperatures_vanish(opt):
    image = piqe_test_image()
    hard = hard_piqe(image, **opt)
    for index in (1, 2, 3):  # every decision occurs both ways on this image
        assert 0 < hard[index].sum() < hard[index].size
    x = torch.from_numpy(image)[None, None]
    errors = []
    for tau in (1e-1, 1e-2, 1e-3, 1e-6):
        soft = piqe_features(x, tau_activity=tau, tau_edge=tau, tau_noise=tau, **opt)[0, 0].numpy()
        assert np.allclose(soft[0], hard[0], rtol=0, atol=1e-6)  # the block variance is not softened (eps only)
        errors.append(np.abs(soft[1:] - hard[1:]).max())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6 and errors[0] > 0.1


def test_piqe_features_on_block_multiples_and_argument_errors():
    x = fixed(2, 3, 32, 48, seed=5)
    features = piqe_features(x)
    assert features.shape == (2, 3, 4, 2, 3)
    assert features[:, :, 1:].min() >= 0 and features[:, :, 1:].max() <= 1
    assert torch.allclose(features[1, 2], piqe_features(x[1:2, 2:3])[0, 0], rtol=0, atol=1e-12)
    assert piqe_features(x, block_size=8).shape == (2, 3, 4, 4, 6)
    with pytest.raises(ValueError, match='block_size must be an even number'):
        piqe_features(x, block_size=15)
    with pytest.raises(ValueError, match='segment_size must lie in'):
        piqe_features(x, block_size=8, segment_size=9)
    with pytest.raises(ValueError, match='temperatures must be positive'):
        piqe_features(x, tau_noise=0)
