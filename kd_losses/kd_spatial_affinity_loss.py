"""FAKD: the student matches the teacher's spatial affinity matrices."""
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch.utils.checkpoint import checkpoint

from .kd_tap_loss import KDTapLoss


def affinity_l1_rows(student, teacher, start, stop):
    """Σ |A_S − A_T| over rows start:stop of the affinities A = F̂ᵀF̂ of (B, C, HW) channel-normalised features."""
    rows_s = student[:, :, start:stop].transpose(1, 2) @ student
    rows_t = teacher[:, :, start:stop].transpose(1, 2) @ teacher
    return (rows_s - rows_t).abs().sum()


@LOSS_REGISTRY.register()
class KDSpatialAffinityLoss(KDTapLoss):
    """FAKD (He et al., ICIP 2020; FACD Eq. 8): ``Σ_taps mean|A_S − A_T|`` with A = F̂ᵀF̂ (HW × HW), F̂ the features
    with each position's channel vector L2-normalised.

    A never exists whole: it is computed ``chunk_size`` rows at a time, each chunk under activation checkpointing,
    so memory is O(B · chunk_size · HW) instead of O(B · HW²) (48×48 LR patches, batch 16: HW² · B · 4 bytes =
    340 MB per tap for A_S alone).

    Args:
        chunk_size (int): Rows of A per chunk. Default: 256.
        loss_weight (float): w_sa of FAKD, 10. Default: 1.0.

    Example::

        feature_opt: {type: KDSpatialAffinityLoss, loss_weight: 10, chunk_size: 256}
    """

    def __init__(self, chunk_size=256, loss_weight=1.0):
        super().__init__(loss_weight)
        self.chunk_size = chunk_size

    def tap_loss(self, student, teacher):
        student = F.normalize(student.flatten(2), dim=1)
        teacher = F.normalize(teacher.flatten(2), dim=1)
        batch, _, positions = student.shape
        total = 0
        for start in range(0, positions, self.chunk_size):
            stop = min(start + self.chunk_size, positions)
            total = total + checkpoint(affinity_l1_rows, student, teacher, start, stop, use_reentrant=False)
        return total / (batch * positions * positions)
