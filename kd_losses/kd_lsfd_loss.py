"""LSFD (Park and Kwak, arXiv:2111.10988): local feature distillation (LFD) and teacher-student-difference attention."""
import torch
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_tap_loss import KDTapLoss


def selective_attention(difference, temperature):
    """Soft attention over the positions of each sample from its (B, H, W) difference map d:
    ``a_bp = HW · softmax_p(d_bp / (τ · mean_q d_bq))``, so the weights of a sample average 1, and a map with no
    difference anywhere gets the uniform weights 1 (the clamp only guards 0 / 0)."""
    flat = difference.flatten(1)
    scale = (temperature * flat.mean(1, keepdim=True)).clamp_min(torch.finfo(flat.dtype).tiny)
    return (flat.shape[1] * torch.softmax(flat / scale, dim=1)).view_as(difference)


@LOSS_REGISTRY.register()
class KDLocalSelectiveFeatureLoss(KDTapLoss):
    """Local-selective feature distillation (Park and Kwak, "Local-Selective Feature Distillation for Single Image
    Super-Resolution", arXiv:2111.10988, 2021; FACD's LFD/LSFD rows, facd.txt Tab. 2-3 and Tab. 12):

    ``loss_weight · Σ_taps 1/(B·C·H·W) · Σ_b Σ_p a_bp · Σ_c |R_bcp − T_bcp|``

    with R = the regressed student features (``network_reg``: 1×1 convolutions, so each position is matched from
    the student's features at that position only: "local"), T = the teacher's, and per sample b and position p:

    - LFD (``selective: false``): a_bp = 1, so each tap contributes the mean absolute difference (FACD Tab. 12,
      "L1 in Feat.").
    - LSFD (``selective: true``): a_bp = HW · softmax_p(d_bp / (τ · mean_q d_bq)) with the difference map
      d_bp = 1/C · Σ_c |R_bcp − T_bcp|: a soft attention over the positions of each sample that weighs the
      distillation most where the student differs most from the teacher. Its weights average 1 per sample, so τ → ∞
      gives LFD; a smaller τ concentrates the weight on the largest differences.

    Not taken from the paper's equations: its method section could not be consulted for this implementation (only
    its abstract and FACD's account of it), so no equation number is cited. From those: an L1 feature distance
    after a regressor (FACD Tab. 12; FACD credits the deep regressor to LSFD), and a soft attention from the
    teacher-student difference that selects pixel positions (the abstract). Our choices: d is the channel mean of
    |R − T| at the tap itself (FACD's wording, "the difference map between the inference output of teacher and
    student", could also mean the output images); the softmax runs over each sample's positions; d is divided by its
    per-sample mean before τ, so that one τ means the same on every tap and backbone (feature scales differ by orders
    of magnitude between taps, and shrink as the student learns); the attention is a weight, not differentiated
    (``detach_attention: true``; false differentiates through it too).

    Reduction: the weighted absolute differences are averaged over (B, C, H, W) at each tap, then summed over taps.

    Args:
        selective (bool): Weigh positions by the teacher-student difference (LSFD); false gives LFD. Default: True.
        temperature (float): τ of the attention, relative to each sample's mean difference. Default: 1.0.
        detach_attention (bool): Whether the attention weights carry no gradient. Default: True.
        loss_weight (float): Weight of the term summed over taps. Default: 1.0.

    Example::

        network_reg: {type: KDConvRegressor, in_channels: [64, 64, 64], out_channels: [256, 256, 256], num_layers: 5}
        feature_opt: {type: KDLocalSelectiveFeatureLoss, selective: true, temperature: 1.0, loss_weight: !!float 1e-3}
    """

    same_channels = True

    def __init__(self, selective=True, temperature=1.0, detach_attention=True, loss_weight=1.0):
        super().__init__(loss_weight)
        name = type(self).__name__
        for key, value in (('selective', selective), ('detach_attention', detach_attention)):
            if not isinstance(value, bool):
                raise ValueError(f'{name}: {key} must be true or false, got {value!r}')
        if not temperature > 0:
            raise ValueError(f'{name}: temperature must be positive, got {temperature}')
        self.selective = selective
        self.temperature = temperature
        self.detach_attention = detach_attention

    def tap_loss(self, student, teacher):
        distance = (student - teacher).abs()
        if not self.selective:
            return distance.mean()
        difference = distance.mean(1)
        attention = selective_attention(difference.detach() if self.detach_attention else difference,
                                        self.temperature)
        return (attention * difference).mean()
