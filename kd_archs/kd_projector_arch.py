"""Projectors that map paired student and teacher features into one channel dimension (SKD)."""
import torch
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class KDFeatureProjector(nn.Module):
    """SKD's projectors (skd.txt Sec. II-B): per matched block, the student feature (C_s channels) and the teacher
    feature (C_t channels) are mapped into one dimension d, giving S_f and T_f for the Multi-dimensional Cross-net
    Attention (Eq. 1) and the Gaussian kernel loss (Eq. 3).

    The paper does not describe the projectors; this reference implementation uses one 1x1 convolution (with bias)
    per side per tap, the lightest map that changes the channel count and nothing else. The network is a trainable
    helper (its student side optimised with the student; all of it saved and resumed with it). Paired features must
    have the same spatial size: SKD distils students of the teacher's own family (Restormer, Uformer, DRSformer with
    fewer blocks and channels), so the i-th block of both networks works at the same resolution; a projector does
    not resample, and a mismatch raises a ValueError naming the tap. Features are NCHW (token outputs (B, HW, C)
    must be reshaped by the caller).

    Collapse: with both sides trainable, L_GK (Eq. 3) has a trivial minimum that ignores the student: both
    projections to 0 (GK of equal zeros is 0, and both MCA terms then vanish too). By default
    (``teacher_side: frozen``) the teacher side keeps its random initialisation and takes no gradient (it is
    computed under no_grad): T_f is a fixed random linear map of the teacher's features, which the student side
    and the student must reach. It is still part of the state dict, so it is saved, resumed and, under DDP,
    broadcast from rank 0 with the rest. ``teacher_side: trainable`` trains both sides, as a literal reading of the
    paper's "projectors" might; use it only with something else that keeps T_f from collapsing.

    Args:
        student_channels (list[int]): C_s of the student feature at each tap.
        teacher_channels (list[int]): C_t of the teacher feature at each tap.
        dim (int): d, the common channel dimension of S_f and T_f (λ = √d in Eq. 1).
        teacher_side (str): 'frozen' (the teacher side keeps its initialisation and takes no gradient) or
            'trainable'. Default: 'frozen'.

    Example::

        network_proj: {type: KDFeatureProjector, student_channels: [32, 64], teacher_channels: [48, 96], dim: 64}
    """

    def __init__(self, student_channels, teacher_channels, dim, teacher_side='frozen'):
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ValueError(f'KDFeatureProjector: student_channels {student_channels} and teacher_channels '
                             f'{teacher_channels} must list the same taps (at least one)')
        if int(dim) != dim or dim < 1:
            raise ValueError(f'KDFeatureProjector: dim must be a positive integer, got {dim}')
        if teacher_side not in ('frozen', 'trainable'):
            raise ValueError(f"KDFeatureProjector: teacher_side must be 'frozen' or 'trainable', got {teacher_side!r}")
        self.student_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in student_channels)
        self.teacher_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in teacher_channels)
        self.teacher_side = teacher_side
        self.teacher_proj.requires_grad_(teacher_side == 'trainable')

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
            expected = (self.student_proj[index].in_channels, self.teacher_proj[index].in_channels)
            if (student.shape[1], teacher.shape[1]) != expected:
                raise ValueError(f'KDFeatureProjector: tap {index} has {student.shape[1]} student and '
                                 f'{teacher.shape[1]} teacher channels; student_channels/teacher_channels say '
                                 f'{expected[0]} and {expected[1]}')
            if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
                raise ValueError(f'KDFeatureProjector: tap {index} has student features {tuple(student.shape)} and '
                                 f'teacher features {tuple(teacher.shape)}; batch and spatial size must match (pair '
                                 'blocks of equal resolution)')
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.teacher_side == 'trainable'):
            teacher_f = [proj(feature) for proj, feature in zip(self.teacher_proj, teacher_features)]
        return [proj(feature) for proj, feature in zip(self.student_proj, student_features)], teacher_f
