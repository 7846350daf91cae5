"""FitNet hints: regressed student features regress onto the teacher's."""
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY

from .kd_tap_loss import KDTapLoss


@LOSS_REGISTRY.register()
class KDHintLoss(KDTapLoss):
    """FitNet hint loss (Romero et al., ICLR 2015, Eq. 3): ``Σ_taps mean((r(F_S) − F_T)²)``.

    The student features arrive already regressed (``network_reg``, a KDConvRegressor); the paper's ½‖·‖² sum is
    taken as a mean over elements so that the weight does not depend on the patch size.

    Example::

        feature_opt: {type: KDHintLoss, loss_weight: 1.0}
    """

    same_channels = True

    def tap_loss(self, student, teacher):
        return F.mse_loss(student, teacher)
