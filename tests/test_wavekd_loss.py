"""WaveKD's wavelet distillation loss (``KDWaveKDLoss``) against PyWavelets' bands, summed level by level and band by
band, and against values worked out by hand; the low-frequency band is left out, unlike MTKD's ``KDWaveletLoss``.

PyWavelets' ``wavedec2(x, 'haar', level=K)`` lists the levels coarsest first: ``[cA_K, (cH_K, cV_K, cD_K), ...,
(cH_1, cV_1, cD_1)]``; the detail bands cH, cV, cD are WaveKD's high-frequency bands LH, HL, HH.
"""
import numpy as np
import pytest
import pywt
import torch

import kd_losses  # noqa: F401  (registers the plugin and applies the BasicSR compatibility fixes)
from basicsr.utils.registry import LOSS_REGISTRY
from conftest import fixed


def wavekd_by_bands(pred, target, levels, distance, loss_weight):
    """loss_weight * sum over levels k of the mean of |d| (l1) or d² (mse) over the three detail bands of level k
    (PyWavelets' 'symmetric' mode), accumulated one level and one band at a time; cA_K is not used."""
    coefficients_s = pywt.wavedec2(pred.numpy(), 'haar', level=levels)
    coefficients_t = pywt.wavedec2(target.numpy(), 'haar', level=levels)
    total = 0.0
    for level in range(1, levels + 1):
        level_sum, level_count = 0.0, 0
        for band_s, band_t in zip(coefficients_s[-level], coefficients_t[-level]):  # cH, cV, cD of this level
            difference = band_s - band_t
            level_sum += float((np.abs(difference) if distance == 'l1' else difference**2).sum())
            level_count += difference.size
        total += level_sum / level_count
    return loss_weight * total


def build_loss(**kwargs):
    return LOSS_REGISTRY.get('KDWaveKDLoss')(**kwargs)


@pytest.mark.parametrize('levels', [1, 3, 4])
@pytest.mark.parametrize('distance', ['l1', 'mse'])
@pytest.mark.parametrize('loss_weight', [1.0, 0.4])
@pytest.mark.parametrize('size', [(16, 32), (48, 16)])
def test_loss_equals_the_per_level_and_band_computation(levels, distance, loss_weight, size):
    pred, target = fixed(2, 3, *size, seed=1), fixed(2, 3, *size, seed=2)
    expected = wavekd_by_bands(pred, target, levels, distance, loss_weight)
    value = build_loss(levels=levels, distance=distance, loss_weight=loss_weight)(pred, target)
    assert value.ndim == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)
    value32 = build_loss(levels=levels, distance=distance, loss_weight=loss_weight)(pred.float(), target.float())
    assert value32.dtype == torch.float32 and value32.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('levels, size', [(2, (9, 7)), (3, (13, 10))])
def test_odd_sizes_follow_pywavelets_symmetric_mode(levels, size):
    pred, target = fixed(1, 3, *size, seed=3), fixed(1, 3, *size, seed=4)
    value = build_loss(levels=levels)(pred, target)
    assert value.item() == pytest.approx(wavekd_by_bands(pred, target, levels, 'l1', 1.0), rel=1e-12)


def checkerboard(rows, cols):
    i, j = torch.arange(rows)[:, None], torch.arange(cols)[None]
    return (1 - 2 * ((i + j) % 2)).double().view(1, 1, rows, cols)  # +1 at the top-left pixel


def test_a_checkerboard_against_zero_by_hand():
    # blocks [[1, -1], [-1, 1]]: HH = 4 / 2 = 2 everywhere, LH = HL = 0; level 2 decomposes LL_1 = 0, so it adds 0.
    # Level 1: mean over the three stacked bands of |.| = (0 + 0 + 2) / 3, of (.)² = (0 + 0 + 4) / 3
    pred = checkerboard(4, 8)
    zero = torch.zeros_like(pred)
    assert build_loss(levels=1)(pred, zero).item() == pytest.approx(2 / 3)
    assert build_loss(levels=2, loss_weight=0.4)(pred, zero).item() == pytest.approx(0.4 * 2 / 3)
    assert build_loss(levels=2, distance='mse')(pred, zero).item() == pytest.approx(4 / 3)


@pytest.mark.parametrize('levels', [1, 4])
def test_the_low_frequency_band_is_not_distilled(levels):
    # a student that differs from its teacher by a constant differs only in LL_K: WaveKD's loss is 0, MTKD's wavelet
    # loss, which counts LL_K, is not
    target = fixed(2, 3, 16, 16, seed=5)
    pred = target + 0.25
    assert build_loss(levels=levels)(pred, target).item() == pytest.approx(0, abs=1e-12)
    assert LOSS_REGISTRY.get('KDWaveletLoss')(levels=levels)(pred, target).item() > 0.1


def test_each_level_counts_once_whatever_its_size():
    # a difference living in one level only: level k's detail bands hold 4**(k-1) times fewer coefficients than level
    # 1's, yet its term is its own mean, not weighted by its share of the coefficients
    size = 16
    for level in (1, 2, 3):
        block = 2**level  # a checkerboard of blocks of side 2**(level-1): only HH of that level is non-zero
        i, j = torch.arange(size)[:, None] // (block // 2), torch.arange(size)[None] // (block // 2)
        pred = (1 - 2 * ((i + j) % 2)).double().view(1, 1, size, size)
        value = build_loss(levels=3)(pred, torch.zeros_like(pred)).item()
        # HH of level k of a ±1 checkerboard of blocks 2**(k-1): 2**k (orthonormal Haar: ×2 per level); mean / 3
        assert value == pytest.approx(2**level / 3), level


def test_gradient_reaches_pred_only_and_is_finite_everywhere():
    pred = fixed(2, 3, 9, 6, seed=6).requires_grad_()
    target = fixed(2, 3, 9, 6, seed=7)  # the frozen teacher's output
    build_loss(levels=2)(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad != 0).all(), 'every pixel, the odd last row included'
    assert target.grad is None
    small = fixed(1, 2, 5, 6, seed=8).requires_grad_()
    for distance in ('l1', 'mse'):
        assert torch.autograd.gradcheck(
            lambda p: build_loss(levels=2, distance=distance, loss_weight=0.4)(p, fixed(1, 2, 5, 6, seed=9)), (small, ))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='levels'):
        build_loss(levels=0)
    with pytest.raises(ValueError, match="distance = 'l2'"):
        build_loss(distance='l2')
    with pytest.raises(ValueError, match='same shape'):
        build_loss()(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 8))
