"""Trainable projectors that map paired student and teacher features into one channel dimension (SKD)."""
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class KDFeatureProjector(nn.Module):
    """SKD's projectors (skd.txt Sec. II-B): per matched block, the student feature (C_s channels) and the teacher
    feature (C_t channels) are mapped into one dimension d, giving S_f and T_f for the Multi-dimensional Cross-net
    Attention (Eq. 1) and the Gaussian kernel loss (Eq. 3).

    The paper does not describe the projectors; this reference implementation uses one 1x1 convolution (with bias)
    per side per tap, the lightest map that changes the channel count and nothing else. Both sides are trainable
    helpers (optimised with the student, saved and resumed with it). Paired features must have the same spatial
    size: SKD distils students of the teacher's own family (Restormer, Uformer, DRSformer with fewer blocks and
    channels), so the i-th block of both networks works at the same resolution; a projector does not resample, and
    a mismatch raises a ValueError naming the tap. Features are NCHW (token outputs (B, HW, C) must be reshaped by
    the caller).

    Args:
        student_channels (list[int]): C_s of the student feature at each tap.
        teacher_channels (list[int]): C_t of the teacher feature at each tap.
        dim (int): d, the common channel dimension of S_f and T_f (λ = √d in Eq. 1).

    Example::

        network_proj: {type: KDFeatureProjector, student_channels: [32, 64], teacher_channels: [48, 96], dim: 64}
    """

    def __init__(self, student_channels, teacher_channels, dim):
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(f'KDFeatureProjector: student_channels {student_channels} and teacher_channels '
                             f'{teacher_channels} must list the same taps (at least one)')
        if int(dim) != dim or dim < 1:
            raise ValueError(f'KDFeatureProjector: dim must be a positive integer, got {dim}')
        self.student_channels, self.teacher_channels = list(student_channels), list(teacher_channels)
        self.student_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in student_channels)
        self.teacher_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in teacher_channels)

    def forward(self, student_features, teacher_features):
        """Project paired taps into d channels.

        Args:
            student_features (list[Tensor]): One (B, C_s, H, W) student feature per tap.
            teacher_features (list[Tensor]): One (B, C_t, H, W) teacher feature per tap, same order.

        Returns:
            tuple[list[Tensor], list[Tensor]]: S_f and T_f, each one (B, d, H, W) tensor per tap.
        """
        taps = len(self.student_proj)
        if len(student_features) != taps or len(teacher_features) != taps:
            raise ValueError(f'KDFeatureProjector: expected {taps} student and {taps} teacher features (one per tap), '
                             f'got {len(student_features)} and {len(teacher_features)}')
        for index, (student, teacher) in enumerate(zip(student_features, teacher_features)):
            if student.dim() != 4 or teacher.dim() != 4:
                raise ValueError(f'KDFeatureProjector: tap {index} features must be NCHW, got student '
                                 f'{tuple(student.shape)} and teacher {tuple(teacher.shape)}')
            expected = (self.student_channels[index], self.teacher_channels[index])
            if (student.shape[1], teacher.shape[1]) != expected:
                raise ValueError(f'KDFeatureProjector: tap {index} has {student.shape[1]} student and '
                                 f'{teacher.shape[1]} teacher channels; student_channels/teacher_channels say '
                                 f'{expected[0]} and {expected[1]}')
            if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
                raise ValueError(f'KDFeatureProjector: tap {index} has student features {tuple(student.shape)} and '
                                 f'teacher features {tuple(teacher.shape)}; batch and spatial size must match (pair '
                                 'blocks of equal resolution)')
        return ([proj(feature) for proj, feature in zip(self.student_proj, student_features)],
                [proj(feature) for proj, feature in zip(self.teacher_proj, teacher_features)])
