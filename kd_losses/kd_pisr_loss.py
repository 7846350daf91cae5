"""PISR's feature distillation (Lee et al., ECCV 2020): the variational information distillation (VID) loss, the
negative log-likelihood of the teacher decoder's features under a distribution predicted from the student's."""
import math

import torch
from torch import nn
from basicsr.utils.registry import LOSS_REGISTRY

# the scale_factor of each distribution in the authors' code (losses/loss_factory.py, vid_loss): b = 0.1·s + eps for
# the Laplace distribution, σ² = 0.001·s + eps for the Gaussian, s the softplus output of the scale head
AUTHORS_SCALE_FACTOR = {'laplace': 0.1, 'gaussian': 1e-3}


@LOSS_REGISTRY.register()
class KDVIDLoss(nn.Module):
    """VID as PISR uses it (Lee, Lee, Kim and Ham, "Learning with Privileged Information for Efficient Image
    Super-Resolution", ECCV 2020, the student's distillation term L_distill; VID: Ahn et al., CVPR 2019, Eq. 2-4):
    the negative log-likelihood of the teacher's features t under a distribution whose mean μ and scale the student
    predicts (``KDVIDRegressor``), per element (b, c, h, w) of each tap:

    - ``distribution: laplace``: b = ``scale_factor``·s + ``eps``, −log p = log(2b) + |t − μ| / b;
    - ``distribution: gaussian``: σ² = ``scale_factor``·s + ``eps``, −log p = ½·log(2π·σ²) + (t − μ)² / (2σ²);

    with s the scale head's softplus output (broadcast over the positions or channels it shares). Minimising it over
    μ and s (trained) and the student bounds the mutual information between the two networks' features from below.

    The PISR paper's text could not be consulted for this implementation: the form, ``scale_factor`` and ``eps``
    follow the authors' released code (losses/loss_factory.py, ``vid_loss``), whose step-2 configuration runs the
    Gaussian (the default of its ``pdf``). Its constant term differs (C/2·log 2π per element for both distributions,
    C the tap's channels, where the exact likelihoods have ½·log 2π and log 2): a constant, so gradients and training
    are the same and only the logged value differs. The authors' "var" of the Gaussian is σ² (it enters as
    ½·log σ² and (t − μ)²/(2σ²)).

    Reduction: the mean over (B, C, H, W) of each tap, summed over the taps, times ``loss_weight`` (λ_S).

    Args:
        distribution (str): laplace | gaussian. Default: 'gaussian' (the authors' released setting).
        scale_factor (float): Multiplies the softplus output before ``eps`` is added. Default: the authors' value for
            the distribution (0.1 Laplace, 0.001 Gaussian).
        eps (float): Added to the scale, a floor that keeps log and division finite. Default: 1e-8 (the authors').
        loss_weight (float): λ_S. Default: 1.0.

    Example::

        network_vid: {type: KDVIDRegressor, in_channels: [64], out_channels: [256], sharing: none}
        vid_opt: {type: KDVIDLoss, distribution: gaussian, scale_factor: !!float 1e-3, eps: !!float 1e-8,
                  loss_weight: !!float 1e-6}
    """

    def __init__(self, distribution='gaussian', scale_factor=None, eps=1e-8, loss_weight=1.0):
        super().__init__()
        if distribution not in AUTHORS_SCALE_FACTOR:
            raise ValueError(f'KDVIDLoss: distribution must be one of {list(AUTHORS_SCALE_FACTOR)}, '
                             f'got {distribution!r}')
        scale_factor = AUTHORS_SCALE_FACTOR[distribution] if scale_factor is None else scale_factor
        for key, value in (('scale_factor', scale_factor), ('eps', eps)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f'KDVIDLoss: {key} must be a positive number, got {value!r}')
        self.distribution = distribution
        self.scale_factor = scale_factor
        self.eps = eps
        self.loss_weight = loss_weight

    def tap_loss(self, mean, scale, teacher):
        scale = self.scale_factor * scale + self.eps
        if self.distribution == 'laplace':
            return (torch.log(2 * scale) + (teacher - mean).abs() / scale).mean()
        return (0.5 * torch.log(2 * math.pi * scale) + (teacher - mean).square() / (2 * scale)).mean()

    def forward(self, means, scales, teacher_features):
        """Args: lists, one entry per tap in the same order: the predicted means (the teacher's shape), the predicted
        scales (softplus outputs, broadcastable to it) and the teacher's features."""
        if not len(means) == len(scales) == len(teacher_features):
            raise ValueError(f'KDVIDLoss: {len(means)} means, {len(scales)} scales and {len(teacher_features)} '
                             'teacher features; train.feature_taps must pair the taps')
        total = 0
        for index, (mean, scale, teacher) in enumerate(zip(means, scales, teacher_features)):
            if mean.shape != teacher.shape:
                raise ValueError(f'KDVIDLoss: tap {index} has predicted means {tuple(mean.shape)} but teacher '
                                 f'features {tuple(teacher.shape)}; they must match')
            total = total + self.tap_loss(mean, scale, teacher)
        return self.loss_weight * total
