"""MiPKD (Li et al., "Knowledge Distillation with Multi-granularity Mixture of Priors for Image Super-Resolution",
ICLR 2025, arXiv:2404.02573): the feature prior mixer's loss."""
from torch import nn
from basicsr.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class KDFeaturePriorMixerLoss(nn.Module):
    """MiPKD's feature prior mixer loss L_FPM with the auxiliary auto-encoder term (MiPKD Tab. 8):

    ``loss_weight · Σ_k [ mean |D_T(Z_k) − F_T,k| + ae_weight · mean |D_T(Z_T,k) − F_T,k| ]``

    over the distillation positions k, with F_T,k the teacher's feature, D_T(Z_k) the mixed latent
    Z_k = I_k ⊙ E_S(F_S,k) + (1 − I_k) ⊙ E_T(F_T,k) decoded into the teacher's space (the mixer reconstructs the
    part of the teacher's latent that the mask replaced by the student's), and D_T(Z_T,k) = D_T(E_T(F_T,k)) the teacher
    auto-encoder's reconstruction (``network_mixer``, ``KDPriorMixer``, computes both). The paper's text was not at hand
    for this implementation (no equation number is cited): the form is the one its published summaries and reviews
    describe, an L1 distance to the teacher's feature plus an auto-encoder term; ``ae_weight`` (its weight, which they
    do not give) is ours, 1 by default.

    Reduction: each absolute difference is averaged over (B, C, H, W) at its position, the positions summed.

    Args:
        ae_weight (float): Weight of the auto-encoder term, ≥ 0 (0: no auto-encoder term, MiPKD Tab. 8). Default: 1.0.
        loss_weight (float): λ_feat, the weight of the whole term (MiPKD Tab. 10: 1). Default: 1.0.

    Example::

        feature_opt: {type: KDFeaturePriorMixerLoss, ae_weight: 1.0, loss_weight: 1.0}
    """

    def __init__(self, ae_weight=1.0, loss_weight=1.0):
        super().__init__()
        if isinstance(ae_weight, bool) or not isinstance(ae_weight, (int, float)) or ae_weight < 0:
            raise ValueError(f'KDFeaturePriorMixerLoss: ae_weight must be a number >= 0, got {ae_weight!r}')
        self.ae_weight = float(ae_weight)
        self.loss_weight = loss_weight

    def forward(self, mixed, teacher, reconstructed):
        """Args: lists, one NCHW tensor per position: D_T(Z_k), F_T,k and D_T(Z_T,k)."""
        if not len(mixed) == len(teacher) == len(reconstructed):
            raise ValueError(f'KDFeaturePriorMixerLoss: {len(mixed)} mixed, {len(teacher)} teacher and '
                             f'{len(reconstructed)} reconstructed features; one of each per position')
        total = 0
        for k, (mix, target, rec) in enumerate(zip(mixed, teacher, reconstructed)):
            if mix.shape != target.shape or rec.shape != target.shape:
                raise ValueError(f'KDFeaturePriorMixerLoss: position {k} has mixed {tuple(mix.shape)}, teacher '
                                 f'{tuple(target.shape)} and reconstructed {tuple(rec.shape)} features; they must '
                                 'match')
            total = total + (mix - target).abs().mean()
            if self.ae_weight:
                total = total + self.ae_weight * (rec - target).abs().mean()
        return self.loss_weight * total
