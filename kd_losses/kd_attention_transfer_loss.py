"""Attention transfer: the student matches the teacher's spatial attention maps."""
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_tap_loss import KDTapLoss


def attention_map(feature):
    """Q = mean over channels of F², flattened and L2-normalised per sample (Zagoruyko & Komodakis, Eq. 2)."""
    return F.normalize(feature.pow(2).mean(1).flatten(1), dim=1)


@LOSS_REGISTRY.register()
class KDAttentionTransferLoss(KDTapLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, Eq. 2): ``β/2 · Σ_taps mean((Q_S − Q_T)²)``.

    Works across different channel counts; the spatial sizes of paired taps must match (a ValueError names the
    tap otherwise: tap positions of equal resolution, or resize before the loss).

    Args:
        beta (float): β of the paper, 1e3. Default: 1000.
        loss_weight (float): Extra weight of the term. Default: 1.0.

    Example::

        feature_opt: {type: KDAttentionTransferLoss, beta: 1000, loss_weight: 1.0}
    """

    def __init__(self, beta=1000.0, loss_weight=1.0):
        super().__init__(loss_weight)
        self.beta = beta

    def tap_loss(self, student, teacher):
        return self.beta / 2 * (attention_map(student) - attention_map(teacher)).pow(2).mean()
