"""SLKD's Scale Conversion Module: student and teacher features of each level in one space."""
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class KDScaleConversion(nn.Module):
    """Scale Conversion Module (SCM) of SLKD (Zhang & Yan, "Knowledge Distillation for Image Restoration:
    Simultaneous Learning from Degraded and Clean Images", Sec. II-B/C, Fig. 2), trainable.

    The paper maps the k-th level features of teacher and student into "a unified scale space" and says no more.
    Its k-th levels are those of one encoder-decoder design (Restormer, Uformer, DRSformer students of the same
    family, Tab. I): they have the same resolution (the input downsampled by the same factor) and differ in
    channels. Here the unified space of level k is the teacher's own: the student's features go through a
    trainable 1x1 convolution to the teacher's channels; the teacher's features pass unchanged. Levels of
    different sizes are refused, not resized: they would pair different depths (``KDSLKDModel`` checks its taps
    on a probe forward before the first step).

    Why the teacher side is fixed: the losses compare statistics (MSCN-based BRISQUE / PIQE features) of the two
    sides. If both sides were trainable, mapping both to a constant (or to any shared degenerate map) would make
    the statistics equal and the loss zero without the student learning anything. With the teacher side fixed to
    the identity, the target statistics are the teacher's, and the module can only lower the loss by finding a
    projection of the student's features whose statistics match them; a collapsed (constant) projection has the
    statistics of a flat map, far from a textured teacher's. The identity also keeps the teacher's statistics
    exactly as the teacher computed them, rather than those of a random mix of its channels. The convolution has
    no bias: MSCN coefficients, hence every statistic, are blind to a constant per channel.

    Args:
        student_channels (list[int]): Student channels at each level.
        teacher_channels (list[int]): Teacher channels at each level (the unified channels).

    Example::

        network_scm_e:  # Res-SL encoder levels -> Restormer's (Tab. I)
          {type: KDScaleConversion, student_channels: [24, 48, 96, 192], teacher_channels: [48, 96, 192, 384]}
    """

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f'student_channels {student_channels} and teacher_channels {teacher_channels} must list '
                             'the same levels')
        self.projections = nn.ModuleList(
            nn.Conv2d(c_s, c_t, 1, bias=False) for c_s, c_t in zip(student_channels, teacher_channels))

    def forward(self, student_features, teacher_features):
        """Map lists of student and teacher features (one NCHW tensor per level) into the unified space.

        Returns:
            tuple[list[Tensor], list[Tensor]]: the student's and the teacher's unified features, level by level of
            the teacher's shape.

        Raises:
            ValueError: a level whose channels differ from the module's, or whose student and teacher maps differ in
            size.
        """
        levels = len(self.projections)
        if len(student_features) != levels or len(teacher_features) != levels:
            raise ValueError(f'{type(self).__name__} has {levels} levels; got {len(student_features)} student and '
                             f'{len(teacher_features)} teacher features')
        unified = []
        for level, (projection, student,
                    teacher) in enumerate(zip(self.projections, student_features, teacher_features)):
            if student.shape[1] != projection.in_channels or teacher.shape[1] != projection.out_channels:
                raise ValueError(f'{type(self).__name__} level {level}: expects {projection.in_channels} student and '
                                 f'{projection.out_channels} teacher channels, got student {tuple(student.shape)} '
                                 f'and teacher {tuple(teacher.shape)}')
            if student.shape[2:] != teacher.shape[2:]:
                raise ValueError(f'{type(self).__name__} level {level}: student maps {tuple(student.shape[2:])} and '
                                 f'teacher maps {tuple(teacher.shape[2:])} differ in size: pair levels of one '
                                 'resolution')
            unified.append(projection(student))
        return unified, list(teacher_features)
