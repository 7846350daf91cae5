"""The contrastive ratio d(anchor, positive) / (Σ_k d(anchor, negative_k) + eps) that DCKD and FACD share.

Helper module (registers nothing). DCKD (dckd.txt Eq. 5) takes one ratio per feature layer, each distance over the
whole batch (``contrastive_ratio``); FACD (facd.txt Eq. 4) takes one ratio per sample, its negatives being the other
samples of the batch (``in_batch_contrastive_ratio``); CSD takes one ratio per layer like DCKD, with K negatives that
every sample of the batch shares (``shared_negatives_contrastive_ratio``). The callers weight the ratios (λ_i per
layer; w_j · α_i per point and sample) and sum them.
"""
import math

import torch

DISTANCES = ('l1', 'l2')


def feature_distance(difference, distance, dims):
    """Distance of a difference tensor over ``dims``: 'l1' the mean absolute value, 'l2' the root mean square
    (the Euclidean norm divided by √(elements), so that both are averages and independent of the feature size)."""
    if distance == 'l1':
        return difference.abs().mean(dims)
    elements = math.prod(difference.shape[d] for d in dims)
    return torch.linalg.vector_norm(difference, dim=dims) / math.sqrt(elements)  # its gradient at 0 is 0, not NaN


def contrastive_ratio(anchor, positive, negatives, distance='l1', eps=1e-7):
    """``d(anchor, positive) / (Σ_k d(anchor, negatives[k]) + eps)``, each distance over the whole batch (DCKD:
    the batch mean of |·| for 'l1').

    Args:
        anchor (Tensor): (B, ...) features.
        positive (Tensor): Same shape as ``anchor``.
        negatives (Tensor): (K, B, ...): ``negatives[k, b]`` is the k-th negative of sample b.
        distance (str): 'l1' (mean absolute difference) or 'l2' (root mean square difference); see
            ``feature_distance``. Default: 'l1'.
        eps (float): Added to the denominator. Default: 1e-7.

    Returns:
        Tensor: the scalar ratio.
    """
    check_distance(distance)
    dims = tuple(range(anchor.dim()))
    d_positive = feature_distance(anchor - positive, distance, dims)
    d_negatives = feature_distance(anchor - negatives, distance, tuple(d + 1 for d in dims))
    return d_positive / (d_negatives.sum(0) + eps)


def pairwise_distance(x, y, distance):
    """(B, B) matrix of ``d(x_i, y_k)``, each distance over one sample's elements as in ``feature_distance``, from
    one ``torch.cdist`` call: no (B, B, ...) tensor of differences is built (nor kept for the backward pass)."""
    x, y = x.flatten(1), y.flatten(1)
    p, divisor = (1, x.shape[1]) if distance == 'l1' else (2, math.sqrt(x.shape[1]))
    return torch.cdist(x[None], y[None], p=p, compute_mode='donot_use_mm_for_euclid_dist')[0] / divisor


def in_batch_contrastive_ratio(anchor, positive, negative_sets, distance='l1', eps=1e-7):
    """One ratio per sample, the negatives being the other samples of the batch (FACD):
    ``d(anchor_i, positive_i) / (Σ_sets Σ_{k≠i} d(anchor_i, set_k) + eps)``, each distance over one sample's
    elements. Sample i's own entries of the sets are never its negatives.

    Args:
        anchor (Tensor): (B, ...) features.
        positive (Tensor): Same shape as ``anchor``.
        negative_sets (list[Tensor]): Tensors of the shape of ``anchor`` whose other samples are the negatives
            (FACD: the positives and the anchors themselves, so K = 2(B − 1)).
        distance (str): 'l1' or 'l2', as in ``feature_distance``. Default: 'l1'.
        eps (float): Added to the denominator. Default: 1e-7.

    Returns:
        Tensor: (B,) ratios.
    """
    check_distance(distance)
    own = torch.eye(anchor.shape[0], dtype=torch.bool, device=anchor.device)
    d_positive = feature_distance(anchor - positive, distance, tuple(range(1, anchor.dim())))
    d_negatives = sum(pairwise_distance(anchor, negatives, distance).masked_fill(own, 0).sum(1)
                      for negatives in negative_sets)
    return d_positive / (d_negatives + eps)


def shared_negatives_contrastive_ratio(anchor, positive, negatives, distance='l1', eps=1e-7):
    """``contrastive_ratio`` with negatives shared by the whole batch (CSD): ``d(anchor, positive) / (Σ_k
    d(anchor, negative_k) + eps)``, each distance over the whole batch, negative k being compared with every sample
    of ``anchor``. Equals ``contrastive_ratio(anchor, positive, negatives[:, None].expand(K, *anchor.shape))``, from
    the (B, K) per-sample distances of one ``torch.cdist`` call instead of (K, B, ...) differences.

    Args:
        anchor (Tensor): (B, ...) features.
        positive (Tensor): Same shape as ``anchor``.
        negatives (Tensor): (K, ...): K features of one sample's shape.
        distance (str): 'l1' or 'l2', as in ``feature_distance``. Default: 'l1'.
        eps (float): Added to the denominator. Default: 1e-7.

    Returns:
        Tensor: the scalar ratio.
    """
    check_distance(distance)
    d_positive = feature_distance(anchor - positive, distance, tuple(range(anchor.dim())))
    per_sample = pairwise_distance(anchor, negatives, distance)  # (B, K)
    # over the whole batch: the mean of the per-sample means (l1); the root of the mean of the per-sample squares (l2)
    d_negatives = per_sample.mean(0) if distance == 'l1' else per_sample.square().mean(0).sqrt()
    return d_positive / (d_negatives.sum() + eps)


def check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f'distance must be one of {DISTANCES}, got {distance!r}')
