"""Common shape of the feature-distillation losses: a per-tap distance summed over the tapped features."""
from torch import nn


class KDTapLoss(nn.Module):
    """``loss_weight · Σ_taps tap_loss(F_S, F_T)``; subclasses define ``tap_loss`` for one pair of NCHW features.

    Args:
        loss_weight (float): Weight of the summed term. Default: 1.0.
    """

    same_channels = False

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def tap_loss(self, student, teacher):
        raise NotImplementedError

    def forward(self, student_features, teacher_features):
        """Args: lists of student and teacher features, one per tap, in the same order."""
        if len(student_features) != len(teacher_features):
            raise ValueError(f'{type(self).__name__}: {len(student_features)} student taps but '
                             f'{len(teacher_features)} teacher taps; train.feature_taps must pair them')
        total = 0
        for index, (student, teacher) in enumerate(zip(student_features, teacher_features)):
            size_s, size_t = student.shape[2:], teacher.shape[2:]
            channels_differ = self.same_channels and student.shape[1] != teacher.shape[1]
            if size_s != size_t or channels_differ:
                raise ValueError(f'{type(self).__name__}: tap {index} has student features {tuple(student.shape)} '
                                 f'and teacher features {tuple(teacher.shape)}; they must match'
                                 + (' (add a regressor network_reg for the channels)' if channels_differ else ''))
            total = total + self.tap_loss(student, teacher)
        return self.loss_weight * total
