"""SKD (skd.txt): Multi-dimensional Cross-net Attention (Eq. 1), the Gaussian kernel loss (Eq. 2-3) and the
image-level contrastive loss (Eq. 4).

SKD has no public code; every choice the paper leaves open is stated where it is made.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.utils.checkpoint import checkpoint

from .kd_tap_loss import KDTapLoss

GK_SATURATED = 0.99  # a GK value above this counts as saturated: its gradient is under 1 % of the one at 0


def _lambda(feature, temperature):
    """λ of Eq. 1: ``temperature`` when given, else √d with d the (projected) channel count of ``feature``."""
    return math.sqrt(feature.shape[1]) if temperature is None else temperature


def mca_channel(student, teacher, temperature=None):
    """Channel interaction of MCA (skd.txt Eq. 1, first line): S_fc = softmax(T_f·S_fᵀ/λ)·S_f.

    With S_f, T_f flattened to (B, d, HW), the attention T_f·S_fᵀ is d × d: entry (i, j) is the product of teacher
    channel i and student channel j over all positions. The softmax normalises over j, the index contracted with
    S_f (the last dimension, as in standard attention), so each row sums to 1 and every channel of S_fc is a convex
    combination of the student's channels.

    Args:
        student (Tensor): S_f, (B, d, H, W).
        teacher (Tensor): T_f, (B, d, H, W).
        temperature (float | None): λ; None is the paper's √d.

    Returns:
        Tensor: S_fc, (B, d, H, W).
    """
    s, t = student.flatten(2), teacher.flatten(2)
    attention = torch.softmax(t @ s.transpose(1, 2) / _lambda(student, temperature), dim=-1)
    return (attention @ s).view_as(student)


def _spatial_columns(queries, keys, values, log_counts, temperature):
    """Columns of S_ft for the query positions in ``queries`` (B, d, k): values · softmax over the key positions."""
    logits = keys.transpose(1, 2) @ queries / temperature + log_counts  # (B, P, k): key position p, query q
    return values @ torch.softmax(logits, dim=1)  # (B, d, k)


def mca_spatial(student, teacher, temperature=None, chunk=256, pool=1):
    """Spatial interaction of MCA (skd.txt Eq. 1, second line): S_ft = S_f·softmax(T_fᵀ·S_f/λ).

    With S_f, T_f flattened to (B, d, HW), the attention T_fᵀ·S_f is HW × HW: entry (p, q) is the product of the
    teacher at position p and the student at position q. S_f multiplies it from the left, so the sum runs over p;
    the softmax normalises over p too (the rows, dim 1 of the (B, HW, HW) matrix), as the channel form normalises
    the index it contracts with S_f. Each column of S_ft is then a convex combination of student positions,
    S_ft[:, q] = Σ_p softmax_p(T_p·S_q/λ)·S_p, keeping the scale of S_f that Eq. 3 compares with T_f. (Normalising
    over q instead would give columns whose weights do not sum to 1.)

    Because the normalised index p is the contracted one, every column q is exact on its own: the matrix is built
    ``chunk`` columns at a time (B × HW × chunk), each under activation checkpointing so backward does not keep
    all chunks either. Memory O(B · HW · chunk) instead of O(B · HW²), same result up to rounding, about one extra
    forward of the attention in backward. Measured (CPU, 1 thread, fp32, B 2, d 32, 64 × 64, forward + backward):
    exact 410 MB above the inputs, chunk 256 68 MB, both 0.5-0.6 s. At training size (B 8, 128 × 128, d 64) one
    (B, HW, HW) fp32 matrix is 8.6 GB; a chunk of 256 is 134 MB. The compute stays 4·B·HW²·d FLOPs forward
    (550 GFLOPs there, ~4× that with backward and recompute): for full-resolution taps, consider ``pool``.

    ``pool`` > 1 approximates instead: keys (T_f) and values (S_f) are averaged over pool × pool windows
    (border windows may be partial), queries stay at full resolution, and each window's logit gets the log of the
    number of positions it averages, so the softmax weighs a window like the positions it stands for. On features
    constant within each window this equals the exact form; it costs 1/pool² of the exact attention.

    Args:
        student (Tensor): S_f, (B, d, H, W).
        teacher (Tensor): T_f, (B, d, H, W).
        temperature (float | None): λ; None is the paper's √d.
        chunk (int | None): Query positions per chunk; None builds the whole matrix at once. Default: 256.
        pool (int): Window of the key/value average pooling; 1 is the exact form. Default: 1.

    Returns:
        Tensor: S_ft, (B, d, H, W).
    """
    temperature = _lambda(student, temperature)
    queries = student.flatten(2)
    if pool > 1:
        keys = F.avg_pool2d(teacher, pool, ceil_mode=True).flatten(2)
        values = F.avg_pool2d(student, pool, ceil_mode=True).flatten(2)
        ones = student.new_ones(1, 1, *student.shape[2:])
        log_counts = F.avg_pool2d(ones, pool, ceil_mode=True, divisor_override=1).flatten(1).log().unsqueeze(-1)
    else:
        keys, values, log_counts = teacher.flatten(2), queries, 0
    positions = queries.shape[2]
    if chunk is None or chunk >= positions:
        return _spatial_columns(queries, keys, values, log_counts, temperature).view_as(student)
    columns = [
        checkpoint(
            _spatial_columns,
            queries[:, :, start:start + chunk],
            keys,
            values,
            log_counts,
            temperature,
            use_reentrant=False) for start in range(0, positions, chunk)
    ]
    return torch.cat(columns, dim=2).view_as(student)


def gaussian_kernel_distance(x, y, sigma=1.0, squared_distance='mean'):
    """GK(x, y) = 1 − exp(−‖x − y‖²/(2σ²)) (skd.txt Eq. 2), one value per sample.

    Args:
        x (Tensor): (B, ...).
        y (Tensor): Same shape as x.
        sigma (float): σ, the kernel width.
        squared_distance (str): 'mean': ‖x − y‖² is the mean of the squared differences over a sample's elements;
            'sum': their sum (the printed squared L2 norm of the whole sample).

    Returns:
        Tensor: (B,) distances in [0, 1).
    """
    squared = (x - y).flatten(1).pow(2)
    distance = squared.mean(1) if squared_distance == 'mean' else squared.sum(1)
    return -torch.expm1(-distance / (2 * sigma**2))


@LOSS_REGISTRY.register()
class KDGaussianKernelLoss(KDTapLoss):
    """SKD's Gaussian kernel loss (skd.txt Eq. 3, with GK of Eq. 2 and MCA of Eq. 1)::

        loss_weight · Σ_blocks [GK(S_f, T_f) + α₁·(GK(S_fc, T_f) + GK(S_ft, T_f))]

    S_f, T_f are the projected student and teacher features of each matched block (``KDFeatureProjector``),
    S_fc = ``mca_channel`` and S_ft = ``mca_spatial`` of them. GK is computed per sample and averaged over the
    batch; the blocks are summed. ``loss_weight`` defaults to α₂ = 0.2 of Eq. 6.

    Choices where the paper is silent:

    - ‖x − y‖² (``squared_distance``): by default the mean of the squared differences per element of a sample, not
      their sum. GK saturates at 1 with a vanishing gradient (∂GK/∂‖·‖² = exp(−‖·‖²/2σ²)/2σ²) once ‖·‖² ≫ 2σ²;
      a sum over a 64 × 128 × 128 feature is ~10⁶ times the per-element value, so the literal norm kills the
      gradient at real feature sizes for any σ that is not itself tied to the feature size. With the mean, GK does
      not depend on the patch size, and ``sigma: 1`` suits O(1) features: unrelated unit-variance features give
      ‖·‖² ≈ 2, GK ≈ 0.63 with a live gradient, and near alignment GK ≈ ‖·‖²/(2σ²), an MSE. ``'sum'`` is the
      printed norm, for reproducing it literally (then scale σ with √(elements)).
    - The softmax axes of MCA and its cost at training size: see ``mca_channel`` and ``mca_spatial``. The default
      is the exact spatial interaction in chunks of 256 query positions (``spatial_pool: 1``).
    - λ = √d with d the projected dimension for both interactions, as printed. For the channel interaction the
      attention contracts over HW positions, so its logits grow with the patch size and its softmax is close to
      one-hot at training size; ``temperature`` overrides λ for both.
    - Gradients flow into S_f and T_f (both projectors are trainable); the caller passes teacher features computed
      under no_grad.

    ``saturation()`` reports the GK values of the last forward (every sample of every term and block): their mean
    (``gk_mean``, relative to GK's maximum 1) and the share above 0.99 (``gk_saturated``), where the gradient has
    fallen below 1 % of its value at 0 (σ too small for the distances of the features).

    Args:
        sigma (float): σ of Eq. 2 (not given in the paper). Default: 1.0.
        alpha (float): α₁ of Eq. 3. Default: 0.5.
        channel_interaction (bool): Include GK(S_fc, T_f) (Tab. III ablations). Default: True.
        spatial_interaction (bool): Include GK(S_ft, T_f) (Tab. III ablations). Default: True.
        temperature (float | None): λ of Eq. 1; None is √d. Default: None.
        squared_distance (str): 'mean' or 'sum', see above. Default: 'mean'.
        spatial_chunk (int | None): Query positions per chunk of the spatial attention; None builds it whole.
            Default: 256.
        spatial_pool (int): Key/value pooling window of the spatial attention; 1 is exact. Default: 1.
        loss_weight (float): α₂ of Eq. 6. Default: 0.2.

    Example::

        feature_opt:
          type: KDGaussianKernelLoss
          sigma: 1.0               # Eq. 2 kernel width (paper: not given)
          alpha: 0.5               # α₁, Eq. 3
          spatial_chunk: 256       # exact spatial MCA, 256 query positions at a time
          spatial_pool: 1
          loss_weight: 0.2         # α₂, Eq. 6
    """

    def __init__(self,
                 sigma=1.0,
                 alpha=0.5,
                 channel_interaction=True,
                 spatial_interaction=True,
                 temperature=None,
                 squared_distance='mean',
                 spatial_chunk=256,
                 spatial_pool=1,
                 loss_weight=0.2):
        super().__init__(loss_weight)
        if sigma <= 0:
            raise ValueError(f'KDGaussianKernelLoss: sigma must be positive, got {sigma}')
        if temperature is not None and temperature <= 0:
            raise ValueError(f'KDGaussianKernelLoss: temperature must be positive or null (√d), got {temperature}')
        if squared_distance not in ('mean', 'sum'):
            raise ValueError(
                f"KDGaussianKernelLoss: squared_distance must be 'mean' or 'sum', got {squared_distance!r}")
        if spatial_chunk is not None and (int(spatial_chunk) != spatial_chunk or spatial_chunk < 1):
            raise ValueError(
                f'KDGaussianKernelLoss: spatial_chunk must be a positive integer or null, got {spatial_chunk}')
        if int(spatial_pool) != spatial_pool or spatial_pool < 1:
            raise ValueError(f'KDGaussianKernelLoss: spatial_pool must be a positive integer, got {spatial_pool}')
        self.sigma, self.alpha, self.temperature = sigma, alpha, temperature
        self.channel_interaction, self.spatial_interaction = channel_interaction, spatial_interaction
        self.squared_distance = squared_distance
        self.spatial_chunk = None if spatial_chunk is None else int(spatial_chunk)
        self.spatial_pool = int(spatial_pool)

    def forward(self, student_features, teacher_features):
        self.kernel_values = []
        return super().forward(student_features, teacher_features)

    def gk(self, x, y):
        """GK averaged over the batch; the values are kept for ``saturation``."""
        values = gaussian_kernel_distance(x, y, self.sigma, self.squared_distance)
        self.kernel_values.append(values.detach())
        return values.mean()

    def saturation(self):
        """{'gk_mean': the mean GK value of the last forward, 'gk_saturated': the share of them above 0.99}, as
        tensors, over every sample, term (S_f, S_fc, S_ft) and block."""
        values = torch.cat(self.kernel_values)
        return OrderedDict(gk_mean=values.mean(), gk_saturated=(values > GK_SATURATED).float().mean())

    def tap_loss(self, student, teacher):
        if student.shape != teacher.shape:
            raise ValueError(f'KDGaussianKernelLoss: projected features {tuple(student.shape)} (student) and '
                             f'{tuple(teacher.shape)} (teacher) differ; project both into d channels with a '
                             'KDFeatureProjector')
        loss = self.gk(student, teacher)
        if self.channel_interaction:
            loss = loss + self.alpha * self.gk(mca_channel(student, teacher, self.temperature), teacher)
        if self.spatial_interaction:
            spatial = mca_spatial(student, teacher, self.temperature, self.spatial_chunk, self.spatial_pool)
            loss = loss + self.alpha * self.gk(spatial, teacher)
        return loss


def _layers(features, name):
    """Features as a list of per-layer tensors (a single tensor is one layer)."""
    if torch.is_tensor(features):
        return [features]
    if isinstance(features, (list, tuple)) and features and all(torch.is_tensor(f) for f in features):
        return list(features)
    raise ValueError(f'KDImageContrastiveLoss: {name} must be a tensor or a non-empty list of tensors '
                     f'(one per feature layer), got {type(features).__name__}')


@LOSS_REGISTRY.register()
class KDImageContrastiveLoss(nn.Module):
    """SKD's image-level contrastive loss (skd.txt Eq. 4), in its negative-log (InfoNCE) form::

        loss_weight · Σ_layers w_l · mean_i −log[ sim(a_i, p_i) / (sim(a_i, p_i) + Σ_{q=1..n} sim(a_i, n_q)) ]

    with sim(u, v) = exp(cos(u, v)/τ), a_i = φ_l(S_r) of sample i (anchor, student output), p_i = φ_l(T_r)
    (positive, teacher output), n_q = φ_l(I_q) the features of the degraded inputs (negatives). ``loss_weight``
    defaults to α₃ = 0.2 of Eq. 6.

    Choices where the paper is silent or ambiguous:

    - Sign: Eq. 4 prints the ratio itself, which a good student *maximises*; minimising it would push the student
      away from the teacher. The loss is its negative log (InfoNCE), evaluated as logsumexp(logits) − logit_pos
      with logits = cos/τ, so it is finite with finite gradients even at the paper's τ = 1e-6.
    - τ = 1e-6 (the paper's value, the default): the log-sum-exp collapses to its largest logit, so each term is
      ≈ max(0, max_q cos(a_i, n_q) − cos(a_i, p_i))/τ, i.e. (cos_neg − cos_pos)/τ for the hardest negative when it
      is closer to the anchor than the positive (up to 1e6 per term, dwarfing the other losses), and ≈ 0 with a
      vanishing gradient once the positive wins by a few τ: a hinge, not a soft contrast. A larger τ (e.g. 0.1)
      gives the usual InfoNCE.
    - Negatives: all n degraded inputs of the batch are negatives for every anchor, the anchor's own degraded
      input included (Σ_{q=1}^{b} of Eq. 4 runs over the whole batch).
    - cos over a feature map: each sample's feature of one layer is flattened to one vector (C·H·W) and cos is
      taken between such vectors (norms clamped at 1e-12).
    - Several layers of φ: one InfoNCE term per layer, weighted by ``layer_weights`` and summed (the paper names
      only "VGG-19"). Each term is averaged over the b anchors.
    - No detaching: the caller computes positive and negative features under no_grad so only the anchor (the
      student's output) carries gradient.

    Args:
        temperature (float): τ of Eq. 4. Default: 1e-6.
        layer_weights (list[float] | None): Weight of each feature layer; None weighs each layer 1. Default: None.
        loss_weight (float): α₃ of Eq. 6. Default: 0.2.

    Example::

        contrastive_opt:
          type: KDImageContrastiveLoss
          temperature: !!float 1e-6   # τ, Sec. III-A
          layer_weights: ~            # one per KDVGG19Features layer; ~ = 1 each
          loss_weight: 0.2            # α₃, Eq. 6
    """

    def __init__(self, temperature=1e-6, layer_weights=None, loss_weight=0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'KDImageContrastiveLoss: temperature must be positive, got {temperature}')
        self.temperature = temperature
        self.layer_weights = None if layer_weights is None else list(layer_weights)
        self.loss_weight = loss_weight

    def forward(self, anchor_feats, positive_feats, negative_feats):
        """InfoNCE of Eq. 4.

        Args:
            anchor_feats (Tensor | list[Tensor]): φ(S_r), one (b, ...) tensor per layer.
            positive_feats (Tensor | list[Tensor]): φ(T_r), same shapes as the anchors.
            negative_feats (Tensor | list[Tensor]): φ(I), one (n, ...) tensor per layer: the n degraded inputs,
                each a negative for every anchor.

        Returns:
            Tensor: The scalar loss.
        """
        anchors = _layers(anchor_feats, 'anchor_feats')
        positives = _layers(positive_feats, 'positive_feats')
        negatives = _layers(negative_feats, 'negative_feats')
        if not len(anchors) == len(positives) == len(negatives):
            raise ValueError(f'KDImageContrastiveLoss: {len(anchors)} anchor, {len(positives)} positive and '
                             f'{len(negatives)} negative feature layers; they must be equally many')
        weights = [1.0] * len(anchors) if self.layer_weights is None else self.layer_weights
        if len(weights) != len(anchors):
            raise ValueError(f'KDImageContrastiveLoss: layer_weights has {len(weights)} entries for '
                             f'{len(anchors)} feature layers')
        total = 0
        for index, (weight, anchor, positive, negative) in enumerate(zip(weights, anchors, positives, negatives)):
            if anchor.shape != positive.shape or anchor.shape[1:] != negative.shape[1:]:
                raise ValueError(f'KDImageContrastiveLoss: layer {index} has anchor {tuple(anchor.shape)}, positive '
                                 f'{tuple(positive.shape)} and negative {tuple(negative.shape)} features; anchor and '
                                 'positive must match, negatives may differ only in batch size')
            anchor = F.normalize(anchor.flatten(1), dim=1)
            positive = F.normalize(positive.flatten(1), dim=1)
            negative = F.normalize(negative.flatten(1), dim=1)
            logits = torch.cat([(anchor * positive).sum(1, keepdim=True), anchor @ negative.t()], 1) / self.temperature
            total = total + weight * (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
        return self.loss_weight * total
