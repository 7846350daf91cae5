"""DFKD's generator losses (Zhang et al., Data-Free Knowledge Distillation for Image Super-Resolution, CVPR 2021): the
adversarial term L_GEN that makes the generator's inputs separate student and teacher, and the reconstruction term L_R
that keeps them inputs the teacher restores consistently."""
import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

# the per-element distance of d = a - b; the reduction then sums or averages it over every element of the batch
DISTANCES = {'l1': torch.abs, 'mse': torch.square}
REDUCTIONS = ('mean', 'sum')


class KDDFKDDistance(nn.Module):
    """D(a, b) = reduce over all elements of dist(a - b): the distance both DFKD terms use. Not registered: the base of
    the two losses below.

    Args:
        distance (str): ``l1`` (|d|, the paper's ||.||_1) or ``mse`` (d², the authors' default ``--loss_type MSE``).
        reduction (str): ``mean`` (the paper's 1/n with n the elements, and E over the batch) or ``sum`` (the
            authors' ``nn.MSELoss(reduction='sum')`` / ``nn.L1Loss(reduction='sum')``: over the batch too).
        loss_weight (float): The term's weight.
    """

    def __init__(self, distance='l1', reduction='mean', loss_weight=1.0):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f'distance = {distance!r}: use one of {list(DISTANCES)}')
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction = {reduction!r}: use one of {list(REDUCTIONS)}')
        self.distance, self.reduction, self.loss_weight = distance, reduction, loss_weight

    def between(self, a, b):
        values = DISTANCES[self.distance](a - b)
        return values.mean() if self.reduction == 'mean' else values.sum()


@LOSS_REGISTRY.register()
class KDDFKDAdversarialLoss(KDDFKDDistance):
    """DFKD's adversarial generator loss L_GEN (the paper's "L_GEN = −log(L_KD + 1)", L_KD its KD loss): the
    generator G is trained to make inputs on which the student S and the frozen teacher T disagree, through the
    student's KD loss on its images::

        L_GEN = −w_G · log(1 + D(S(G(z)), T(G(z)))),   D(a, b) = (1/n) Σ_i |a_i − b_i|

    (the batch's expectation over z is the mean over its samples). Minimising L_GEN maximises D; the logarithm bounds
    the gain of an ever larger discrepancy. The authors' code computes the same with ``--loss_type MSE`` (their
    default, d² instead of |d|: ``distance: mse``) summed over the whole batch (``reduction: sum``) and
    ``--gw`` = w_G = 1.

    Reduction: D is the mean (or sum) over every element of the batch; one logarithm of it per batch.

    Args:
        distance (str): ``l1`` (the paper) or ``mse`` (the authors' default). Default: ``l1``.
        reduction (str): ``mean`` (the paper's 1/n) or ``sum`` (the authors' code). Default: ``mean``.
        loss_weight (float): w_G (the authors' ``--gw``: 1). Default: 1.0.

    Example::

        adversarial_opt: {type: KDDFKDAdversarialLoss, distance: l1, reduction: mean, loss_weight: 1.0}
    """

    def forward(self, student, teacher):
        """
        Args:
            student (Tensor): S(G(z)), (B, C, H, W).
            teacher (Tensor): T(G(z)), the shape of ``student``.

        Returns:
            Tensor: The weighted scalar loss (≤ 0).
        """
        return -self.loss_weight * torch.log1p(self.between(student, teacher))


@LOSS_REGISTRY.register()
class KDDFKDReconstructionLoss(KDDFKDDistance):
    """DFKD's reconstruction loss L_R for same-size restoration: the teacher's restoration of a generated input must
    agree with that input at a coarse scale::

        L_R = w_R · D(A_k(T(G(z))), A_k(G(z))),   D(a, b) = (1/n) Σ_i |a_i − b_i|

    with A_k the mean over each k × k block (``avg_pool2d`` with kernel and stride k; A_1 is the identity).

    The paper's L_R (for super-resolution) is D(R(T(G(z))), G(z)) with R the bicubic downsampling by the SR
    scale: the teacher's output, degraded again, must give back the LR input it came from. A restoration network
    (deraining, deblurring, denoising) maps a degraded image to a clean one of the same size, and its degradation (rain
    streaks, an unknown blur, random noise) cannot be applied again to T(G(z)). What the degradations of these tasks
    leave nearly unchanged is the image at a coarse scale (zero-mean noise and thin streaks average out, a blur keeps
    the low frequencies), so R becomes the k × k block mean applied to both sides: the teacher's output must keep the
    generated input's coarse content. With k = 1 the term asks T(G(z)) = G(z) (inputs the teacher leaves unchanged,
    i.e. clean images), which is why k > 1 is the setting of the option files. The authors' code compares with the same
    distance and reduction as L_GEN (MSE summed, ``--reconw`` = w_R = 1 in their demo command).

    Reduction: the mean (or sum) over every element of the two k-times smaller batches.

    Args:
        downscale (int): k, the side of the averaged blocks (a divisor of the generated image's sides). Default: 4.
        distance (str): ``l1`` (the paper) or ``mse`` (the authors' default). Default: ``l1``.
        reduction (str): ``mean`` (the paper's 1/n) or ``sum`` (the authors' code). Default: ``mean``.
        loss_weight (float): w_R (the authors' demo: ``--reconw=1.0``). Default: 1.0.

    Example::

        reconstruction_opt: {type: KDDFKDReconstructionLoss, downscale: 4, distance: l1, reduction: mean,
                             loss_weight: 1.0}
    """

    def __init__(self, downscale=4, distance='l1', reduction='mean', loss_weight=1.0):
        super().__init__(distance, reduction, loss_weight)
        if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
            raise ValueError(f'downscale = {downscale!r}: the block side k must be a positive integer')
        self.downscale = downscale

    def forward(self, restored, generated):
        """
        Args:
            restored (Tensor): T(G(z)), (B, C, H, W), H and W multiples of ``downscale``.
            generated (Tensor): G(z), the shape of ``restored``.

        Returns:
            Tensor: The weighted scalar loss.
        """
        height, width = generated.shape[-2:]
        if height % self.downscale or width % self.downscale:
            raise ValueError(f'downscale = {self.downscale} does not divide the generated image\'s size '
                             f'{height}x{width}')
        k = self.downscale
        return self.loss_weight * self.between(F.avg_pool2d(restored, k), F.avg_pool2d(generated, k))
