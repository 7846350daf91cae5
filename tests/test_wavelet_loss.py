"""MTKD's Haar DWT and wavelet distillation loss (Eq. 3) against hand-computed bands, PyWavelets and a per-band loop.

Band names: ours are (LL, LH, HL, HH), the first letter the filter along the width; PyWavelets' ``dwt2`` returns
``(cA, (cH, cV, cD))`` with cA = LL, cH = LH (horizontal detail: high-pass along the height), cV = HL, cD = HH,
with the same signs. ``wavedec2(x, 'haar', level=K)`` lists the levels coarsest first:
``[cA_K, (cH_K, cV_K, cD_K), ..., (cH_1, cV_1, cD_1)]``; ours returns LL_K and the details of levels 1 to K.
"""
import numpy as np
import pytest
import pywt
import torch

import kd_losses  # noqa: F401  (registers the plugin and applies the BasicSR compatibility fixes)
from basicsr.utils.registry import LOSS_REGISTRY
from kd_losses.kd_wavelet_loss import haar_dwt, haar_idwt
from conftest import fixed

EVEN = [(8, 16), (16, 8)]
ODD = [(7, 5), (9, 12), (13, 1)]


# ---------------------------------------------------------------------------------------------------- transform
@pytest.mark.parametrize('levels', [1, 2, 3])
@pytest.mark.parametrize('size', EVEN + ODD)
def test_inverse_reconstructs_the_input(levels, size):
    x = fixed(2, 3, *size)
    ll, details = haar_dwt(x, levels)
    assert torch.allclose(haar_idwt(ll, details, size), x, atol=1e-12)
    if size[0] % 2 == 0 and size[1] % 2 == 0:
        assert torch.allclose(haar_idwt(ll, details), x, atol=1e-12), 'an even size needs no size argument'


@pytest.mark.parametrize('size, levels, band_sizes', [((7, 5), 2, [(4, 3), (2, 2)]),
                                                      ((13, 1), 3, [(7, 1), (4, 1), (2, 1)])])
def test_odd_sizes_repeat_the_last_row_and_column_before_each_level(size, levels, band_sizes):
    x = fixed(1, 2, *size)
    ll, details = haar_dwt(x, levels)
    assert [tuple(d.shape[-2:]) for d in details] == band_sizes and ll.shape[-2:] == band_sizes[-1]
    assert all(d.shape[-3] == 3 for d in details)
    padded = torch.cat([x, x[..., -1:, :]], dim=-2)  # both sizes are odd in both dims
    padded = torch.cat([padded, padded[..., -1:]], dim=-1)
    ll_padded, details_padded = haar_dwt(padded, levels)
    assert torch.equal(ll, ll_padded) and torch.equal(details[0], details_padded[0])
    reconstruction = haar_idwt(ll, details)  # without the size: the padded signal, repeated row/column included
    assert reconstruction.shape[-2:] == padded.shape[-2:] and torch.allclose(reconstruction, padded, atol=1e-12)


def test_bands_of_a_3x3_image_by_hand():
    # x = [[0, 1, 4], [9, 16, 25], [36, 49, 64]]; the last row and column are repeated: blocks [[a, b], [c, d]] =
    # [[0, 1], [9, 16]], [[4, 4], [25, 25]], [[36, 49], [36, 49]], [[64, 64], [64, 64]]
    x = (torch.arange(9.).view(1, 1, 3, 3))**2
    ll, (details, ) = haar_dwt(x, 1)
    lh, hl, hh = details[0, 0]
    assert ll[0, 0].tolist() == [[13, 29], [85, 128]]  # (a + b + c + d) / 2
    assert lh.tolist() == [[-12, -21], [0, 0]]  # (a + b - c - d) / 2
    assert hl.tolist() == [[-4, 0], [-13, 0]]  # (a - b + c - d) / 2
    assert hh.tolist() == [[3, 0], [0, 0]]  # (a - b - c + d) / 2


@pytest.mark.parametrize('size', [(8, 4), (5, 7)])
def test_bands_of_a_constant_image(size):
    # orthonormal: the LL of a constant c is 2c per level (2x2 block sum / 2), every detail band is 0
    ll, details = haar_dwt(torch.full((1, 1, *size), 0.75, dtype=torch.float64), 2)
    assert torch.allclose(ll, torch.full_like(ll, 3.)) and all((d == 0).all() for d in details)


def pattern(rows, cols, kind):
    i, j = torch.arange(rows)[:, None], torch.arange(cols)[None]
    sign = {'checkerboard': (i + j) % 2, 'horizontal stripes': i % 2 + 0 * j, 'vertical stripes': j % 2 + 0 * i}[kind]
    return (1 - 2 * sign).double().view(1, 1, rows, cols)  # +1 at the top-left pixel


@pytest.mark.parametrize('kind, band', [('checkerboard', 2), ('horizontal stripes', 0), ('vertical stripes', 1)])
def test_bands_of_checkerboard_and_stripes(kind, band):
    # checkerboard blocks [[1, -1], [-1, 1]]: HH = 4 / 2 = 2; rows alternating [[1, 1], [-1, -1]]: LH = 2 (horizontal
    # edges); columns alternating [[1, -1], [1, -1]]: HL = 2; every other band 0, and LL of the next level 0
    ll, details = haar_dwt(pattern(4, 6, kind), 2)
    expected = torch.zeros(1, 1, 3, 2, 3, dtype=torch.float64)
    expected[:, :, band] = 2
    assert torch.equal(details[0], expected)
    assert (details[1] == 0).all() and (ll == 0).all()


@pytest.mark.parametrize('size', EVEN + ODD)
def test_one_level_equals_pywt_dwt2(size):
    x = fixed(2, 3, *size)
    c_a, (c_h, c_v, c_d) = pywt.dwt2(x.numpy(), 'haar')  # default mode 'symmetric'
    ll, (details, ) = haar_dwt(x, 1)
    np.testing.assert_allclose(ll.numpy(), c_a, atol=1e-12)
    for ours, theirs in zip(details.unbind(-3), (c_h, c_v, c_d)):  # LH = cH, HL = cV, HH = cD
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)


@pytest.mark.parametrize('levels', [2, 3])
@pytest.mark.parametrize('size', [(16, 24), (24, 16), (19, 21)])
def test_levels_equal_pywt_wavedec2(levels, size):
    x = fixed(1, 2, *size)
    coefficients = pywt.wavedec2(x.numpy(), 'haar', level=levels)
    ll, details = haar_dwt(x, levels)
    np.testing.assert_allclose(ll.numpy(), coefficients[0], atol=1e-12)
    for level in range(1, levels + 1):
        for ours, theirs in zip(details[level - 1].unbind(-3), coefficients[-level]):  # LH, HL, HH = cH, cV, cD
            np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_transform_keeps_the_dtype_and_handles_any_leading_dims(dtype):
    x = fixed(2, 3, 2, 6, 5, dtype=dtype)  # e.g. a video batch (b, t, c, H, W)
    ll, details = haar_dwt(x, 2)
    assert ll.dtype == dtype and ll.shape == (2, 3, 2, 2, 2) and details[0].shape == (2, 3, 2, 3, 3, 3)
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(haar_idwt(ll, details, (6, 5)).double(), x.double(), atol=tolerance)


# --------------------------------------------------------------------------------------------------------- loss
def wavelet_loss_by_bands(pred, target, levels, loss_weight):
    """Eq. 3 with PyWavelets' bands: loss_weight / (3K + 1) * sum over the 3K detail bands and LL_K of the mean
    absolute difference, one band at a time."""
    coefficients_s = pywt.wavedec2(pred.numpy(), 'haar', level=levels)
    coefficients_t = pywt.wavedec2(target.numpy(), 'haar', level=levels)
    terms = [np.abs(coefficients_s[0] - coefficients_t[0]).mean()]  # LL_K
    for level in range(1, levels + 1):
        for band_s, band_t in zip(coefficients_s[-level], coefficients_t[-level]):  # cH, cV, cD of this level
            terms.append(np.abs(band_s - band_t).mean())
    assert len(terms) == 3 * levels + 1
    return loss_weight * sum(terms) / len(terms)


def build_loss(**kwargs):
    return LOSS_REGISTRY.get('KDWaveletLoss')(**kwargs)


@pytest.mark.parametrize('levels', [1, 2])
@pytest.mark.parametrize('loss_weight', [1.0, 0.25])
@pytest.mark.parametrize('size', [(8, 12), (9, 7)])
def test_loss_equals_the_per_band_computation(levels, loss_weight, size):
    pred, target = fixed(2, 3, *size, seed=1), fixed(2, 3, *size, seed=2)
    expected = wavelet_loss_by_bands(pred, target, levels, loss_weight)
    value = build_loss(levels=levels, loss_weight=loss_weight)(pred, target)
    assert value.ndim == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value32 = build_loss(levels=levels, loss_weight=loss_weight)(pred.float(), target.float())
    assert value32.dtype == torch.float32 and value32.item() == pytest.approx(expected, rel=1e-5)


def test_loss_of_a_checkerboard_against_zero_by_hand():
    # only HH is non-zero (2 everywhere): K = 1: 2 / 4; K = 2: level 2 and LL_2 are 0, so 2 / 7
    pred = pattern(4, 8, 'checkerboard')
    assert build_loss(levels=1)(pred, torch.zeros_like(pred)).item() == pytest.approx(0.5)
    assert build_loss(levels=2, loss_weight=0.7)(pred, torch.zeros_like(pred)).item() == pytest.approx(0.7 * 2 / 7)


def test_gradient_reaches_pred_only_and_is_finite_everywhere():
    pred = fixed(2, 3, 9, 6, seed=3).requires_grad_()
    target = fixed(2, 3, 9, 6, seed=4)  # the frozen aggregator's output
    value = build_loss(levels=2)(pred, target)
    value.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad != 0).all(), 'every pixel, the odd last row included'
    assert target.grad is None
    small = fixed(1, 2, 5, 6, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: build_loss(levels=2, loss_weight=0.3)(p, fixed(1, 2, 5, 6, seed=6)),
                                    (small, ))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='levels'):
        build_loss(levels=0)
    with pytest.raises(ValueError, match='same shape'):
        build_loss()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 6))
    with pytest.raises(ValueError, match='at least 2 dims'):
        haar_dwt(torch.zeros(8), 1)
