"""FACD (facd.txt): adaptive indicator (Eq. 1), adaptive image loss (Eq. 2), feature contrastive loss (Eq. 3-4)."""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from .kd_contrastive_ratio import DISTANCES, in_batch_contrastive_ratio

REDUCTIONS = ('sum', 'mean')


def normalize_per_sample(feature):
    """Eq. 3, F̂ = F / ‖F‖₂ with the norm over each sample's (C, H, W): ``F.normalize(F.flatten(1), dim=1)``
    (which divides by max(‖F‖₂, 1e-12)). The same formula as in ``KDConvRegressor(normalize_input=True)``."""
    return F.normalize(feature.flatten(1), dim=1).view_as(feature)


def sample_l1(x, y):
    """‖x_i − y_i‖₁ of the paper as the per-sample mean absolute error: (B,)."""
    return (x - y).abs().flatten(1).mean(1)


def adaptive_indicator(student, teacher, gt):
    """FACD Eq. 1: α_i = 0 where the student output is closer to GT than the teacher's (per-sample mean absolute
    error, strictly smaller), else 1 (ties give 1). Computed without gradient.

    Args:
        student (Tensor): (B, C, H, W) student output.
        teacher (Tensor): (B, C, H, W) teacher output.
        gt (Tensor): (B, C, H, W) ground truth.

    Returns:
        Tensor: (B,) float tensor of 0 and 1, in the student's dtype.
    """
    with torch.no_grad():
        return (sample_l1(student, gt) >= sample_l1(teacher, gt)).to(student.dtype)


def check_alpha(name, alpha, batch, reference):
    """α as a (B,) tensor: all ones when None (FCD), otherwise checked."""
    if alpha is None:
        return reference.new_ones(batch)
    if alpha.shape != (batch, ):
        raise ValueError(f'{name}: alpha must have shape ({batch},) (one value per sample), got {tuple(alpha.shape)}')
    return alpha.detach()


@LOSS_REGISTRY.register()
class KDAdaptiveImageLoss(nn.Module):
    """Image-domain loss of FACD (Moon et al., IEEE Access 2023, facd.txt Eq. 2):
    ``loss_weight · 1/(2N) · Σ_i [(2 − α_i) · ‖S_i − GT_i‖₁ + α_i · ‖S_i − T_i‖₁]``.

    ‖·‖₁ is each sample's mean absolute error (over C, H, W), and the sum over the N samples is divided by 2N as
    printed, so with α = 1 everywhere the loss is the mean of L1(S, GT) and L1(S, T). α comes from Eq. 1
    (``adaptive_indicator``, also reachable from a built loss as ``loss.adaptive_indicator``); ``alpha=None``
    means all ones, i.e. FCD (Tab. 9). The teacher output and α carry no gradient (detached).

    Args:
        loss_weight (float): Weight of the term. Default: 1.0.

    Example::

        pixel_opt: {type: KDAdaptiveImageLoss, loss_weight: 1.0}
    """

    adaptive_indicator = staticmethod(adaptive_indicator)

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, student, teacher, gt, alpha=None):
        """Args:
            student, teacher, gt (Tensor): (B, C, H, W) student output, teacher output and ground truth.
            alpha (Tensor | None): (B,) indicator of Eq. 1, or None for all ones (FCD).

        Returns:
            Tensor: the scalar loss.
        """
        if not student.shape == teacher.shape == gt.shape:
            raise ValueError(f'{type(self).__name__}: student {tuple(student.shape)}, teacher {tuple(teacher.shape)} '
                             f'and gt {tuple(gt.shape)} must have one shape')
        batch = student.shape[0]
        alpha = check_alpha(type(self).__name__, alpha, batch, student)
        per_sample = (2 - alpha) * sample_l1(student, gt) + alpha * sample_l1(student, teacher.detach())
        return self.loss_weight * per_sample.sum() / (2 * batch)


@LOSS_REGISTRY.register()
class KDFeatureContrastiveLoss(nn.Module):
    """Feature-domain adaptive contrastive loss of FACD (Moon et al., IEEE Access 2023, facd.txt Eq. 3-4):
    ``loss_weight · Σ_i Σ_j w_j · α_i · d(DR(F̂ˢ_ij), F̂ᵀ_ij) / (Σ_k d(DR(F̂ˢ_ij), F̂^Neg_kj) + eps)``.

    - F̂ = F / ‖F‖₂ per sample (Eq. 3, ``normalize_per_sample``). The teacher features are normalised here; the
      student features must arrive already normalised AND regressed: ``KDConvRegressor(num_layers=5,
      normalize_input=True)`` applies the same formula before its 1×1 convolutions.
    - Negatives of sample i at point j (Sec. III-B): F̂ᵀ_kj and DR(F̂ˢ_kj) for every k ≠ i, so K = 2(B − 1); the
      sample's own teacher feature (its positive) and its own student feature are never negatives. A batch of one
      sample has none: ValueError.
    - Eq. 4's denominator measures from DR(F̂ˢ_ij), the anchor, while Eq. 6-7 print DR(F̂ˢ_kj); Eq. 4 (the
      method's definition) is followed.
    - d is ``distance``: 'l1' (Eq. 4's ‖·‖₁) or 'l2' (the text calls the measure "Euclidean"; root mean square,
      i.e. ‖·‖₂ / √(C·H·W)). Both are per-sample means over (C, H, W); a ratio does not depend on that scale
      except through ``eps``, which the paper does not print.
    - ``reduction``: 'sum' sums over samples as Eq. 4 prints (no 1/N), so the term grows with the batch size;
      'mean' divides that sum by the batch size N (a per-sample mean, as Eq. 2's 1/(2N) does for L_SR). Both sum
      over the matching points.
    - ``w`` follows the order of the feature lists; index 0 is the "top" that Tab. 10 weighs most (FAT, w_1 =
      0.5). The paper never says which end is the top. We read j = 1..3 as network order, input side first (the
      order of FAKD's matching points and of our option files), so index 0 = the point nearest the input: Tab. 10
      explains FAT by the cascade, where earlier features influence everything after them. List the points the
      other way round to weigh the output side most.
    - ``detach_student_negatives``: the paper does not say whether the student negatives DR(F̂ˢ_kj) are constants.
      Default False differentiates Eq. 4 as printed, so they are also pushed away from the anchor; True treats
      them as constants, as DCKD and CSD treat their negatives.
    - The defaults are Eq. 4 as printed. The shipped FACD option files set ``detach_student_negatives: true`` and
      ``reduction: mean``, the form that trained best on the CPU demo pair (README "FACD").
    - Cost: the distances to the negatives are two (B, B) ``torch.cdist`` matrices per point; no (B − 1) · B copies
      of the feature maps are built.

    Args:
        point_weights (list[float]): w_j, one per matching point. Default: [0.5, 0.3, 0.2] (Tab. 10, FAT).
        distance (str): 'l1' or 'l2'. Default: 'l1'.
        detach_student_negatives (bool): Whether DR(F̂ˢ_kj) as negatives carry no gradient. Default: False.
        reduction (str): 'sum' (over samples, as printed) or 'mean' (over samples). Default: 'sum'.
        eps (float): Added to the denominator (not in the paper). Default: 1e-7.
        loss_weight (float): λ of Eq. 5 (4 in the paper). Default: 1.0.

    Example::

        feature_opt: {type: KDFeatureContrastiveLoss, point_weights: [0.5, 0.3, 0.2], distance: l1, loss_weight: 4}
        network_reg: {type: KDConvRegressor, in_channels: [64, 64, 64], out_channels: [256, 256, 256],
                      num_layers: 5, normalize_input: true}
    """

    def __init__(self,
                 point_weights=(0.5, 0.3, 0.2),
                 distance='l1',
                 detach_student_negatives=False,
                 reduction='sum',
                 eps=1e-7,
                 loss_weight=1.0):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f'distance must be one of {DISTANCES}, got {distance!r}')
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}')
        self.reduction = reduction
        self.point_weights = [float(w) for w in point_weights]
        self.distance = distance
        self.detach_student_negatives = detach_student_negatives
        self.eps = eps
        self.loss_weight = loss_weight

    def forward(self, student, teacher, alpha=None):
        """Args:
            student (list[Tensor]): DR(F̂ˢ_j), the regressed normalised student features, (B, C_j, H_j, W_j) per
                matching point (C_j the teacher's channels).
            teacher (list[Tensor]): F_j, the raw teacher features, same shapes (normalised here).
            alpha (Tensor | None): (B,) indicator of Eq. 1, or None for all ones (FCD).

        Returns:
            Tensor: the scalar loss.
        """
        name = type(self).__name__
        if not len(student) == len(teacher) == len(self.point_weights):
            raise ValueError(f'{name}: point_weights has {len(self.point_weights)} matching points but got '
                             f'{len(student)} student and {len(teacher)} teacher features')
        batch = student[0].shape[0]
        if batch < 2:
            raise ValueError(f'{name}: a batch of {batch} sample has no negatives (they are the other samples of '
                             'the batch); use a batch size of at least 2')
        alpha = check_alpha(name, alpha, batch, student[0])
        total = 0
        for j, (weight, anchor, feature_t) in enumerate(zip(self.point_weights, student, teacher)):
            if anchor.shape != feature_t.shape or anchor.shape[0] != batch:
                raise ValueError(f'{name}: matching point {j} has student features {tuple(anchor.shape)} and teacher '
                                 f'features {tuple(feature_t.shape)}; they must match, batch {batch} (regress the '
                                 'student to the teacher channels)')
            positive = normalize_per_sample(feature_t.detach())
            student_negatives = anchor.detach() if self.detach_student_negatives else anchor
            ratios = in_batch_contrastive_ratio(anchor, positive, [positive, student_negatives], self.distance,
                                                self.eps)
            total = total + weight * (alpha * ratios).sum()
        return self.loss_weight * (total / batch if self.reduction == 'mean' else total)
