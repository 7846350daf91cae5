"""WaveKD's distillation loss: the high-frequency Haar wavelet bands of the student's output against the teacher's."""
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_wavelet_loss import KDHaarDWTLoss

# the distance of one level's detail bands: the mean over their elements of |d| or d² (d = student − teacher)
DISTANCES = {'l1': lambda difference: difference.abs().mean(), 'mse': lambda difference: difference.square().mean()}


@LOSS_REGISTRY.register()
class KDWaveKDLoss(KDHaarDWTLoss):
    """Wavelet knowledge distillation (Zhang et al., Wavelet Knowledge Distillation: Towards Efficient Image-to-Image
    Translation, CVPR 2022): the student's output is distilled on the high-frequency bands of a K-level discrete
    wavelet transform only; the low-frequency band is not distilled (the paper's abstract). The distance is L1, as
    the authors' released code and its option help ("L1 loss between the high frequency information") state::

        L_WKD = sum_{k = 1..K} || DWT_{H,k}(S) - DWT_{H,k}(T) ||_1,   DWT_{H,k} = (LH_k, HL_k, HH_k)

    with the orthonormal Haar DWT of :func:`haar_dwt` (``pred`` = S, the student's output; ``target`` = T, the frozen
    teacher's output). Each level k > 1 decomposes the previous level's LL band; the LL band of every level is left
    out, the last one included. K = 4 and Haar are the authors' released setting (their README's ``WKD`` class and
    ``run.sh``: ``--level 4 --basis haar``).

    Reduction: a level's term is the mean over the elements of its three detail bands stacked (batch, channels, the
    three bands, positions), as the authors' ``F.l1_loss(teacher_h[k], student_h[k])`` on pytorch_wavelets' (N, C,
    3, H_k, W_k) bands; the K terms are summed (not averaged) and multiplied by ``loss_weight``. A coarse level thus
    weighs as much as a fine one although it holds 4x fewer coefficients. The DWT is linear, so the loss is computed
    from the DWT of ``pred - target`` (``KDHaarDWTLoss.bands``, as MTKD's loss): one transform instead of two.

    Where this differs from the authors' code: odd sizes repeat the last row/column before a level (PyWavelets'
    'symmetric' mode for Haar, as ``haar_dwt``) where pytorch_wavelets' ``mode='zero'`` pads zeros; on sides
    divisible by 2^K (a 128 patch at K = 4) both are the same transform. ``distance: mse`` gives the squared distance
    their CycleGAN training file computes (``models/cycle_gan_model.py``: ``mse_loss`` per level) although their
    README, their option help and that file's own ``get_wavelet_loss`` use L1 (the default here).

    Args:
        levels (int): Decomposition levels K. Default: 4 (authors' README and run.sh).
        distance (str): ``l1`` (mean |d|, the README's and option help's L1) or ``mse`` (mean d², the authors' CycleGAN
            training file). Default: ``l1``.
        loss_weight (float): The weight of L_WKD in the student's loss (the authors' ``--kd_wavelet_distillation``,
            "alpha in the paper"; their run.sh: 0.4). Default: 1.0.

    Example::

        wavelet_opt:
          type: KDWaveKDLoss
          levels: 4          # K (authors' run.sh: --level 4 --basis haar)
          distance: l1       # || . ||_1 on the high-frequency bands
          loss_weight: 0.4   # alpha (authors' run.sh: --kd_wavelet_distillation 0.4)
    """

    def __init__(self, levels=4, distance='l1', loss_weight=1.0):
        super().__init__(levels, loss_weight)
        if distance not in DISTANCES:
            raise ValueError(f'distance = {distance!r}: use one of {list(DISTANCES)}')
        self.distance = distance

    def forward(self, pred, target):
        """
        Args:
            pred (Tensor): Student output S, (b, c, H, W) (any leading dims, any H, W).
            target (Tensor): Teacher output T, the shape of ``pred``.

        Returns:
            Tensor: The weighted scalar loss.
        """
        _, details = self.bands(pred, target)
        distance = DISTANCES[self.distance]
        return self.loss_weight * sum(distance(detail) for detail in details)
