"""MTKD's wavelet distillation loss and the orthonormal 2-D Haar DWT it is computed in."""
import torch
from torch import nn
from basicsr.utils.registry import LOSS_REGISTRY


def haar_basis(dtype=None, device=None):
    """The four orthonormal 2-D Haar filters as a (4, 2, 2) tensor, in the order LL, LH, HL, HH.

    Filter k applied to a 2x2 block [[a, b], [c, d]] (a top-left, b top-right) gives the band value
    ``sum(basis[k] * block)``: LL = (a + b + c + d) / 2, LH = (a + b - c - d) / 2, HL = (a - b + c - d) / 2,
    HH = (a - b - c + d) / 2. The first letter names the filter along the width, the second along the height, so LH
    (low-pass along the width, high-pass along the height) holds horizontal edges. This is PyWavelets' convention
    up to names: ``pywt.dwt2(x, 'haar')`` returns ``(LL, (LH, HL, HH))`` as ``(cA, (cH, cV, cD))``, same signs.
    """
    return torch.tensor([[[1., 1.], [1., 1.]], [[1., 1.], [-1., -1.]], [[1., -1.], [1., -1.]], [[1., -1.], [-1., 1.]]],
                        dtype=dtype,
                        device=device) / 2


def check_levels(levels):
    """Raise a ValueError unless the number of decomposition levels is a positive integer."""
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f'levels must be a positive integer, got {levels!r}')


def haar_dwt(x, levels=1, basis=None):
    """K-level orthonormal 2-D Haar DWT over the last two dims; the LL band is decomposed further at each level.

    An odd height or width is extended by repeating its last row or column once before each level, which for the
    Haar wavelet is exactly PyWavelets' default 'symmetric' mode: level k has ceil(H_{k-1} / 2) x ceil(W_{k-1} / 2)
    coefficients and :func:`haar_idwt` inverts the transform exactly (it crops the repeated row/column away).

    Args:
        x (Tensor): (..., H, W), any H, W >= 1.
        levels (int): Decomposition levels K >= 1.
        basis (Tensor | None): ``haar_basis()`` on ``x``'s device and dtype, to reuse across calls; built when None.

    Returns:
        tuple[Tensor, list[Tensor]]: LL_K, (..., H_K, W_K); and the detail bands of levels 1 (finest) to K, each
        (..., 3, H_k, W_k) with the bands in the order LH, HL, HH.
    """
    check_levels(levels)
    if x.dim() < 2:
        raise ValueError(f'haar_dwt needs a tensor of at least 2 dims (..., H, W), got shape {tuple(x.shape)}')
    basis = haar_basis(x.dtype, x.device) if basis is None else basis
    ll, details = x, []
    for _ in range(levels):
        if ll.shape[-2] % 2:
            ll = torch.cat([ll, ll[..., -1:, :]], dim=-2)
        if ll.shape[-1] % 2:
            ll = torch.cat([ll, ll[..., -1:]], dim=-1)
        blocks = ll.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2))  # (..., H/2, 2, W/2, 2)
        bands = torch.einsum('...iajb,kab->...kij', blocks, basis)
        ll = bands[..., 0, :, :]
        details.append(bands[..., 1:, :, :])
    return ll, details


def haar_idwt(ll, details, size=None):
    """Inverse of :func:`haar_dwt`.

    Args:
        ll (Tensor): LL_K, (..., H_K, W_K).
        details (list[Tensor]): Detail bands of levels 1 to K, each (..., 3, H_k, W_k) ordered LH, HL, HH.
        size (tuple[int, int] | None): (H, W) of the signal that was transformed. None: 2 H_1 x 2 W_1; an odd size
            is needed to drop the row/column repeated before the first level.

    Returns:
        Tensor: (..., H, W).
    """
    basis = haar_basis(ll.dtype, ll.device)
    sizes = [size] + [detail.shape[-2:] for detail in details[:-1]]  # of the signal each level reconstructs
    for detail, out_size in zip(reversed(details), reversed(sizes)):
        bands = torch.cat([ll.unsqueeze(-3), detail], dim=-3)
        ll = torch.einsum('...kij,kab->...iajb', bands, basis).flatten(-4, -3).flatten(-2, -1)
        if out_size is not None:
            ll = ll[..., :out_size[0], :out_size[1]]
    return ll


class KDHaarDWTLoss(nn.Module):
    """Base of the losses computed on the Haar DWT of a student's output minus its target (MTKD's ``KDWaveletLoss``,
    WaveKD's ``KDWaveKDLoss``); not registered. Holds ``levels`` (K), ``loss_weight`` and the Haar filters (a buffer,
    so they move with the loss: no copy per step).

    Args:
        levels (int): Decomposition levels K >= 1.
        loss_weight (float): The loss's weight.
    """

    def __init__(self, levels, loss_weight):
        super().__init__()
        check_levels(levels)
        self.levels = levels
        self.loss_weight = loss_weight
        self.register_buffer('basis', haar_basis(), persistent=False)

    def bands(self, pred, target):
        """:func:`haar_dwt` of ``pred - target`` (the DWT is linear: one transform instead of two), after checking
        that the two have one shape: LL_K and the detail bands of levels 1 to K."""
        if pred.shape != target.shape:
            raise ValueError(f'pred and target must have the same shape, got {tuple(pred.shape)} and '
                             f'{tuple(target.shape)}')
        return haar_dwt(pred - target, self.levels, self.basis.to(pred))


@LOSS_REGISTRY.register()
class KDWaveletLoss(KDHaarDWTLoss):
    """Wavelet distillation loss of MTKD (Jiang et al., MTKD: Multi-Teacher Knowledge Distillation for Image
    Super-Resolution, ECCV 2024; mtkd.txt Eq. 3)::

        L_dis = 1 / (3K + 1) * sum_{i in {LL, LH, HL, HH}, k = 1..K} || DWT_{i,k}(I_stu) - DWT_{i,k}(I_MT) ||_1

    with the orthonormal Haar DWT of :func:`haar_dwt` (``pred`` = I_stu, the student's output; ``target`` = I_MT,
    the frozen aggregator's output). For K > 1 the LL band is decomposed further and only the last level's LL band
    enters the sum: 3K detail bands and one approximation band, the 3K + 1 terms of the normalisation.

    Reduction: each band's || . ||_1 is the mean absolute difference over its elements (batch, channels,
    positions), as BasicSR's L1Loss and the paper's other L1 terms (Eq. 1, 2); the 3K + 1 band means are averaged
    and multiplied by ``loss_weight``. Odd sizes: the last row/column is repeated once before each level
    (PyWavelets' default 'symmetric' mode for Haar), so every pixel counts and the transform stays invertible.
    The DWT is linear, so the loss is computed from the DWT of ``pred - target``: one transform instead of two.

    The authors' unused ``dwtLoss`` (YuxuanJJ/MTKD, basic_loss.py) differs: pytorch_wavelets with zero padding,
    K = 4 by default, one mean over the three detail bands of a level, and no 1 / (3K + 1).

    Args:
        levels (int): Decomposition levels K. Paper: 1 (mtkd.txt Sec. 4.2). Default: 1.
        loss_weight (float): Weight of L_dis in L_total (Eq. 4 gives it 1; alpha weighs the L1 to the ground truth).
            Default: 1.0.

    Example::

        distill_opt:
          type: KDWaveletLoss
          levels: 1          # K (mtkd.txt Sec. 4.2)
          loss_weight: 1.0   # L_total = alpha * L_stu + L_dis (Eq. 4)
    """

    def __init__(self, levels=1, loss_weight=1.0):
        super().__init__(levels, loss_weight)

    def forward(self, pred, target):
        """
        Args:
            pred (Tensor): Student output I_stu, (b, c, H, W) (any leading dims, any H, W).
            target (Tensor): Aggregated teacher output I_MT, the shape of ``pred``.

        Returns:
            Tensor: The weighted scalar loss.
        """
        ll, details = self.bands(pred, target)
        # the three detail bands of a level have the same size: the sum of their means is 3 x the mean of the stack
        band_sum = ll.abs().mean() + sum(3 * detail.abs().mean() for detail in details)
        return self.loss_weight * band_sum / (3 * self.levels + 1)
