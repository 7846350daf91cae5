"""DCKD (dckd.txt): the dynamic contrastive loss (Eq. 5) and the distribution mapping cross-entropy (Eq. 8-9)."""
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from .kd_contrastive_ratio import contrastive_ratio


@LOSS_REGISTRY.register()
class KDDynamicContrastiveLoss(nn.Module):
    """Dynamic contrastive loss of DCKD (Zhou et al., AAAI 2025, dckd.txt Eq. 5):
    ``loss_weight · Σ_i λ_i · mean|f_i^Anc − f_i^Pos| / (Σ_j mean|f_i^Anc − f_ij^Neg| + eps)``.

    Each ‖·‖₁ of Eq. 5 is the mean absolute difference over the whole layer tensor (batch, channels, positions), as
    in the authors' code: one ratio per layer, not per sample. ``eps`` is not printed in Eq. 5; 1e-7 is the
    authors' value. Only the anchor carries gradient: the positive and the negatives are detached here (encode
    them under no_grad anyway). Any contrastive loss of this form over a feature pyramid can use it (e.g. CSD with
    VGG features and other images as negatives).

    Layout of the negatives: a (N, B, C, H, W) tensor per layer, ``[j, b]`` the j-th negative of sample b. Encode
    the positive and the N negatives in one batched pass, ordered negative-major (``torch.cat([pos, neg_1, ...,
    neg_N])``, (N+1)·B images); every tapped feature ``f`` then splits as ``f.unflatten(0, (N + 1, B))``, whose
    ``[0]`` is the positive and ``[1:]`` the negatives.

    Args:
        layer_weights (list[float]): λ_i, one per layer, in the order of the feature lists (shallow to deep for
            the VQGAN taps). Default: [1/32, 1/16, 1/8, 1/4, 1] (the authors' code).
        eps (float): Added to the denominator. Default: 1e-7.
        loss_weight (float): λ_dcl of Eq. 10 (0.1 in the paper). Default: 1.0.

    Example::

        dcl_opt: {type: KDDynamicContrastiveLoss, layer_weights: [0.03125, 0.0625, 0.125, 0.25, 1.0], loss_weight: 0.1}
    """

    def __init__(self, layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), eps=1e-7, loss_weight=1.0):
        super().__init__()
        self.layer_weights = [float(w) for w in layer_weights]
        self.eps = eps
        self.loss_weight = loss_weight

    def forward(self, anchor, positive, negatives):
        """Args:
            anchor (list[Tensor]): Features of the student output, (B, C_i, H_i, W_i) per layer.
            positive (list[Tensor]): Features of the teacher output, same shapes.
            negatives (list[Tensor]): Features of the N negative images, (N, B, C_i, H_i, W_i) per layer.

        Returns:
            Tensor: the scalar loss.
        """
        counts = {'anchor': len(anchor), 'positive': len(positive), 'negatives': len(negatives)}
        if set(counts.values()) != {len(self.layer_weights)}:
            raise ValueError(f'{type(self).__name__}: layer_weights has {len(self.layer_weights)} layers but got '
                             f'{counts} feature layers')
        total = 0
        for i, (weight, anc, pos, neg) in enumerate(zip(self.layer_weights, anchor, positive, negatives)):
            if pos.shape != anc.shape or neg.dim() != anc.dim() + 1 or neg.shape[1:] != anc.shape or not len(neg):
                raise ValueError(f'{type(self).__name__}: layer {i} has anchor {tuple(anc.shape)}, positive '
                                 f'{tuple(pos.shape)} and negatives {tuple(neg.shape)}; expected the positive '
                                 'shaped like the anchor and the negatives (N >= 1, *anchor shape)')
            total = total + weight * contrastive_ratio(anc, pos.detach(), neg.detach(), eps=self.eps)
        return self.loss_weight * total


@LOSS_REGISTRY.register()
class KDCodebookCrossEntropyLoss(nn.Module):
    """Distribution mapping module of DCKD (dckd.txt Eq. 8-9): per position, the category distribution over the
    VQGAN codebook is ``C = softmax(−d / τ)`` with d the squared distances of the position's code vector to every
    code; ``loss = loss_weight · mean over positions (and batch) of −Σ_k C_T,k · log C_S,k``.

    Eq. 8 prints ψ(‖F − e‖²) without the minus sign, which would make the farthest code the likeliest category;
    −d is what a distance-to-category mapping means and what the authors' code computes (softmax(max d − d)).
    τ is our addition (the paper has τ = 1). The teacher distribution carries no gradient (detached).

    ``double_softmax: true`` reproduces the authors' code, which passes the student's probabilities C_S (not its
    logits) to ``F.cross_entropy``, so the student is softmaxed twice: ``log softmax(C_S)`` replaces ``log C_S``
    (τ still applies once, inside C_S).

    Args:
        temperature (float): τ. Default: 1.0 (the paper).
        double_softmax (bool): Reproduce the authors' code as above. Default: False (Eq. 9).
        loss_weight (float): λ_ce of Eq. 10 (0.001 in the paper). Default: 1.0.

    Example::

        ce_opt: {type: KDCodebookCrossEntropyLoss, temperature: 1.0, double_softmax: false, loss_weight: 0.001}
    """

    def __init__(self, temperature=1.0, double_softmax=False, loss_weight=1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be positive, got {temperature}')
        self.temperature = temperature
        self.double_softmax = double_softmax
        self.loss_weight = loss_weight

    def forward(self, student_distances, teacher_distances):
        """Args:
            student_distances (Tensor): Squared distances to the codes, codes on the last dim: (B, H·W, n_embed) as
                ``KDVQGANEncoder.code_distances`` returns them (any leading dims are positions).
            teacher_distances (Tensor): The same for the teacher output.

        Returns:
            Tensor: the scalar loss.
        """
        if student_distances.shape != teacher_distances.shape or student_distances.dim() < 2:
            raise ValueError(f'{type(self).__name__}: student distances {tuple(student_distances.shape)} and teacher '
                             f'distances {tuple(teacher_distances.shape)} must have one shape (..., n_embed)')
        log_c_student = F.log_softmax(-student_distances / self.temperature, dim=-1)
        if self.double_softmax:
            log_c_student = F.log_softmax(log_c_student.exp(), dim=-1)
        c_teacher = F.softmax(-teacher_distances.detach() / self.temperature, dim=-1)
        return self.loss_weight * -(c_teacher * log_c_student).sum(-1).mean()
