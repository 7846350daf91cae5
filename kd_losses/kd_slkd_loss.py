"""SLKD's KL-style losses (slkd.txt Eq. 2-4): naturalness (BRISQUE), edge/texture (PIQE) and image-level KL."""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_nss_features import brisque_features, piqe_features
from .kd_tap_loss import KDTapLoss

GATE_SATURATED = 1e-3  # a soft PIQE gate within this of 0 or 1 counts as saturated (its sigmoid's slope < 1e-3 / τ)


def to_distribution(values, positive, eps):
    """``(positive(values) + eps) / Σ (positive(values) + eps)`` over the last dim: a distribution per row."""
    values = positive(values) + eps
    return values / values.sum(dim=-1, keepdim=True)


def kl_term(p, q):
    """SLKD's ``Σ p · log(p / q)`` over the last dim (slkd.txt Eq. 2-4, the student's distribution first)."""
    return (p * (p.log() - q.log())).sum(dim=-1)


class KDStatisticsKLLoss(KDTapLoss):
    """``loss_weight · Σ_k mean_{n, c} Σ_i p_S log(p_S / p_T)`` over statistics of matched feature levels k.

    The statistics of each channel of each sample (``statistics``, shape (N, C, ...)) are flattened to a vector f
    and made a distribution by ``p = (softplus(f) + eps) / Σ (softplus(f) + eps)``: softplus because some
    statistics are signed (the AGGD mean), is smooth and keeps their order; ``eps`` (1e-8) only guards against
    softplus underflowing to 0 before the log. (The paper only says the features enter S log(S/T); large statistics,
    such as BRISQUE's shapes in [0.2, 10], weigh more in the normalised vector than variances and means.) The
    teacher's statistics are a target: computed without autograd, so no gradient reaches the teacher side.

    Args:
        loss_weight (float): Weight of the sum over levels. Default: 1.0.
        eps (float): Added to each softplus before normalising. Default: 1e-8.
    """

    same_channels = True

    def __init__(self, loss_weight=1.0, eps=1e-8):
        super().__init__(loss_weight)
        self.eps = eps

    def statistics(self, features):
        raise NotImplementedError

    def student_statistics(self, features):
        """The statistics of the student's features (a subclass may keep what it reports of them)."""
        return self.statistics(features)

    def distribution(self, statistics):
        return to_distribution(statistics.flatten(2), F.softplus, self.eps)

    def tap_loss(self, student, teacher):
        with torch.no_grad():
            target = self.distribution(self.statistics(teacher))
        return kl_term(self.distribution(self.student_statistics(student)), target).mean()


@LOSS_REGISTRY.register()
class KDNaturalnessLoss(KDStatisticsKLLoss):
    """SLKD natural and colour loss L_NC (Zhang & Yan, "Knowledge Distillation for Image Restoration:
    Simultaneous Learning from Degraded and Clean Images", Eq. 2) on BRISQUE-style features (Eq. 1, [18]).

    ``forward(student_list, teacher_list)`` takes the student's and teacher A's encoder features of the matched
    levels k, already mapped into one space by the Scale Conversion Module (``KDScaleConversion``: same channels and
    size per level). Per level: BRISQUE's 18 features per scale (GGD and AGGD fits of the MSCN map and its neighbour
    products, :func:`brisque_features`) of every channel, made a distribution over the features per sample and
    channel (see :class:`KDStatisticsKLLoss`), then the printed ``Σ S log(S / T)``. Reduction: sum over the
    features, mean over samples and channels (so that the weight does not depend on batch size or width), sum over
    levels as Eq. 2 prints. The paper gives none of the statistics' constants beyond BRISQUE's; they are
    BRISQUE's (7 x 7 window, σ 7/6, 2 scales) with ``C`` for [0, 1]-scaled data.

    Args:
        loss_weight (float): α₂ of Eq. 6 (0.1 in the paper). Default: 1.0.
        mscn_c (float): MSCN constant C (BRISQUE's C = 1 on [0, 255] = 1/255 on [0, 1]). Default: 1/255.
        kernel_size (int): MSCN window side. Default: 7.
        kernel_sigma (float): MSCN window standard deviation. Default: 7/6.
        num_scales (int): BRISQUE scales (full and half resolution). A level too small for all of them (under
            2 x 2 at the coarsest; only tiny test patches reach that) uses the scales it has. Default: 2.
        eps (float): Added to each softplus before normalising. Default: 1e-8.

    Example::

        naturalness_opt: {type: KDNaturalnessLoss, loss_weight: 0.1}  # alpha_2, Eq. 6
    """

    def __init__(self, loss_weight=1.0, mscn_c=1 / 255, kernel_size=7, kernel_sigma=7 / 6, num_scales=2, eps=1e-8):
        super().__init__(loss_weight, eps)
        self.num_scales = num_scales
        self.brisque_opt = dict(c=mscn_c, kernel_size=kernel_size, sigma=kernel_sigma)

    def statistics(self, features):
        # a level whose coarser scale would be under 2 x 2 (e.g. 2 x 2 itself) keeps the scales it has
        num_scales = min(self.num_scales, max(1, min(features.shape[2:]).bit_length() - 1))
        return brisque_features(features, num_scales=num_scales, **self.brisque_opt)


@LOSS_REGISTRY.register()
class KDEdgeTextureLoss(KDStatisticsKLLoss):
    """SLKD edge and texture loss L_ET (Zhang & Yan, "Knowledge Distillation for Image Restoration: Simultaneous
    Learning from Degraded and Clean Images", Eq. 3) on PIQE-style features ([20]).

    ``forward(student_list, teacher_list)`` takes the student's and teacher B's decoder features of the matched
    levels k, mapped by the Scale Conversion Module. Per level: PIQE's block features of every channel
    (:func:`piqe_features`: variance, soft activity, soft noticeable distortion and soft noise of each 16 x 16 MSCN
    block), flattened over features and blocks and made a distribution per sample and channel (see
    :class:`KDStatisticsKLLoss`), then ``Σ S log(S / T)``. Reduction: sum over features and blocks, mean over
    samples and channels, sum over levels. PIQE's thresholds are hard; here they are sigmoids whose temperatures
    (not in either paper) are a tenth of the scale of the compared quantity: 0.01 for the 0.1 thresholds on
    variance and segment deviation, 0.05 for the noise criterion σ − 2β, whose terms are of order 0.5.

    ``saturation()`` reports the soft criteria (gates a, d, n of :func:`piqe_features`) of the student's blocks in
    the last forward: ``et_gates_saturated``, the share of them within 1e-3 of 0 or 1, where a sigmoid g passes
    g(1 − g) < 1e-3, under 0.4 % of its slope at 1/2: hardly any gradient (PIQE's hard thresholds, in effect).

    Args:
        loss_weight (float): α₂ of Eq. 6 (0.1 in the paper). Default: 1.0.
        mscn_c (float): MSCN constant C (PIQE's C = 1 on [0, 255] = 1/255 on [0, 1]). Default: 1/255.
        kernel_size (int): MSCN window side. Default: 7.
        kernel_sigma (float): MSCN window standard deviation. Default: 7/6.
        block_size (int): PIQE block side. Default: 16.
        segment_size (int): PIQE edge-segment length. Default: 6.
        activity_threshold (float): PIQE's block-variance threshold. Default: 0.1.
        edge_threshold (float): PIQE's segment-deviation threshold. Default: 0.1.
        tau_activity (float): Temperature of the activity sigmoid. Default: 0.01.
        tau_edge (float): Temperature of the edge-segment sigmoids. Default: 0.01.
        tau_noise (float): Temperature of the noise sigmoid. Default: 0.05.
        eps (float): Added to each softplus before normalising. Default: 1e-8.

    Example::

        edge_texture_opt: {type: KDEdgeTextureLoss, loss_weight: 0.1}  # alpha_2, Eq. 6
    """

    def __init__(self,
                 loss_weight=1.0,
                 mscn_c=1 / 255,
                 kernel_size=7,
                 kernel_sigma=7 / 6,
                 block_size=16,
                 segment_size=6,
                 activity_threshold=0.1,
                 edge_threshold=0.1,
                 tau_activity=0.01,
                 tau_edge=0.01,
                 tau_noise=0.05,
                 eps=1e-8):
        super().__init__(loss_weight, eps)
        self.piqe_opt = dict(
            c=mscn_c,
            kernel_size=kernel_size,
            sigma=kernel_sigma,
            block_size=block_size,
            segment_size=segment_size,
            activity_threshold=activity_threshold,
            edge_threshold=edge_threshold,
            tau_activity=tau_activity,
            tau_edge=tau_edge,
            tau_noise=tau_noise)

    def forward(self, student_features, teacher_features):
        self.student_gates = []
        return super().forward(student_features, teacher_features)

    def statistics(self, features):
        return piqe_features(features, **self.piqe_opt)

    def student_statistics(self, features):
        statistics, gates = piqe_features(features, return_gates=True, **self.piqe_opt)
        self.student_gates.append(gates.detach().flatten())
        return statistics

    def saturation(self):
        """{'et_gates_saturated': the share of the student's gates of the last forward within 1e-3 of 0 or 1}, a
        tensor, over every gate, block, channel, sample and level."""
        gates = torch.cat(self.student_gates)
        return OrderedDict(et_gates_saturated=(torch.minimum(gates, 1 - gates) < GATE_SATURATED).float().mean())


@LOSS_REGISTRY.register()
class KDImageKLLoss(nn.Module):
    """SLKD image-level KL loss L_KL (Zhang & Yan, "Knowledge Distillation for Image Restoration: Simultaneous
    Learning from Degraded and Clean Images", Eq. 4): ``Σ_{i,j} S_r log(S_r / TA_r)``.

    Each channel of each image is a distribution over its pixels: ``p = (max(x, 0) + eps) / Σ (max(x, 0) + eps)``
    (pixel values are intensities; clamping only affects a student's out-of-range negative values, which then get
    no gradient from this term but still from L_pixel). The direction is the printed one, KL(S_r ‖ TA_r), with the
    student first. Reduction: sum over pixels, mean over samples and channels. The teacher's output is a target:
    no gradient reaches it.

    Args:
        loss_weight (float): α₁ of Eq. 6 (0.5 in the paper). Default: 1.0.
        eps (float): Added to every pixel before normalising. Default: 1e-8.

    Example::

        kl_opt: {type: KDImageKLLoss, loss_weight: 0.5}  # alpha_1, Eq. 6
    """

    def __init__(self, loss_weight=1.0, eps=1e-8):
        super().__init__()
        self.loss_weight = loss_weight
        self.eps = eps

    def forward(self, student, teacher):
        """Args: the student's output S_r and teacher A's output TA_r, NCHW of one shape."""
        if student.dim() != 4 or student.shape != teacher.shape:
            raise ValueError(f'{type(self).__name__}: student {tuple(student.shape)} and teacher '
                             f'{tuple(teacher.shape)} must be NCHW images of one shape')
        target = to_distribution(teacher.detach().flatten(2), torch.relu, self.eps)
        prediction = to_distribution(student.flatten(2), torch.relu, self.eps)
        return self.loss_weight * kl_term(prediction, target).mean()
