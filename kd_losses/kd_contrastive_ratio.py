"""The contrastive ratio d(anchor, positive) / (Σ_k d(anchor, negative_k) + eps) that DCKD and FACD share.

Helper module (registers nothing). DCKD (dckd.txt Eq. 5) takes one ratio per feature layer, each distance over the
whole batch; FACD (facd.txt Eq. 4) takes one ratio per sample, its negatives being the other samples of the batch
(``other_samples``). The callers weight the ratios (λ_i per layer; w_j · α_i per point and sample) and sum them.
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


def contrastive_ratio(anchor, positive, negatives, distance='l1', per_sample=False, eps=1e-7):
    """``d(anchor, positive) / (Σ_k d(anchor, negatives[k]) + eps)``.

    Args:
        anchor (Tensor): (B, ...) features.
        positive (Tensor): Same shape as ``anchor``.
        negatives (Tensor): (K, B, ...): ``negatives[k, b]`` is the k-th negative of sample b.
        distance (str): 'l1' (mean absolute difference) or 'l2' (root mean square difference); see
            ``feature_distance``. Default: 'l1'.
        per_sample (bool): False: each distance is taken over the whole batch, all of (B, ...) (DCKD: the batch
            mean of |·| for 'l1'), and one ratio comes back. True: each distance is taken over one sample's
            elements, and B ratios come back (FACD). Default: False.
        eps (float): Added to the denominator. Default: 1e-7.

    Returns:
        Tensor: a scalar (``per_sample`` False) or (B,) ratios.
    """
    if distance not in DISTANCES:
        raise ValueError(f'distance must be one of {DISTANCES}, got {distance!r}')
    dims = tuple(range(1 if per_sample else 0, anchor.dim()))
    d_positive = feature_distance(anchor - positive, distance, dims)
    d_negatives = feature_distance(anchor - negatives, distance, tuple(d + 1 for d in dims))
    return d_positive / (d_negatives.sum(0) + eps)


def other_samples(features):
    """The other samples of the batch, aligned for ``contrastive_ratio``: (B − 1, B, ...) with ``[s − 1, i]`` =
    ``features[(i + s) mod B]`` for s = 1..B − 1, i.e. every k ≠ i exactly once and never i itself. One gather:
    it holds (B − 1) · B samples."""
    batch = features.shape[0]
    shifts = torch.arange(1, batch, device=features.device)[:, None]
    return features[(torch.arange(batch, device=features.device) + shifts) % batch]
