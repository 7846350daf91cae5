"""VID's trainable regressors (Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019),
in PISR's form: a mean and a scale of the teacher's features predicted from the student's, one pair per feature tap."""
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY

# How the predicted scale is shared (the authors' PISR code, models/vid_module.py, names them None, C, HW and CHW):
# output channels of the scale head (None: the teacher's) and whether it is averaged over positions.
SHARING = {
    'none': (None, False),  # a scale per channel and position (PISR's released setting, 'expanding:None')
    'position': (None, True),  # per channel, shared over positions ('C': the same variance at every position)
    'channel': (1, False),  # per position, shared over channels ('HW')
    'all': (1, True),  # one per sample and tap ('CHW')
}


def head(c_in, c_out, pooled):
    """1×1 convolution (c_in → c_in), PReLU (one parameter), 1×1 convolution (c_in → c_out), then an average over the
    positions when ``pooled``: the authors' adaptation layer."""
    layers = [nn.Conv2d(c_in, c_in, 1), nn.PReLU(), nn.Conv2d(c_in, c_out, 1)]
    if pooled:
        layers.append(nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class KDVIDRegressor(nn.Module):
    """Per feature tap, the mean μ and the (positive) scale of the distribution of the teacher's features given the
    student's features F_S, the two heads of PISR's VID module (its models/vid_module.py):

    - μ = conv1×1(PReLU(conv1×1(F_S))), student channels → teacher channels (the hidden layer keeps the student's
      width, as the authors' layer keeps its input width);
    - scale = softplus(conv1×1(PReLU(conv1×1(F_S)))), with ``sharing``: ``none`` one value per channel and position
      (the authors' released setting), ``position`` one per channel (averaged over the positions), ``channel`` one
      per position (one output channel), ``all`` one per sample. ``KDVIDLoss`` maps it to b or σ² (its
      ``scale_factor`` and ``eps``).

    Trained with the student (a trainable helper: optimised, saved, resumed, synchronised under DDP).

    Args:
        in_channels (list[int]): Student channels at each tap.
        out_channels (list[int]): Teacher channels at each tap.
        sharing (str): How the scale is shared: none | position | channel | all. Default: 'none'.

    Example::

        network_vid: {type: KDVIDRegressor, in_channels: [64], out_channels: [256], sharing: none}
    """

    def __init__(self, in_channels, out_channels, sharing='none'):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(f'KDVIDRegressor: in_channels {in_channels} and out_channels {out_channels} must list '
                             'the same taps')
        if sharing not in SHARING:
            raise ValueError(f'KDVIDRegressor: sharing must be one of {list(SHARING)}, got {sharing!r}')
        scale_channels, pooled = SHARING[sharing]
        self.means = nn.ModuleList(head(c_in, c_out, False) for c_in, c_out in zip(in_channels, out_channels))
        self.scales = nn.ModuleList(
            nn.Sequential(head(c_in, scale_channels or c_out, pooled), nn.Softplus())
            for c_in, c_out in zip(in_channels, out_channels))

    def forward(self, features):
        """A list of student features (one per tap, NCHW) → (list of means, list of scales), one of each per tap."""
        if len(features) != len(self.means):
            raise ValueError(f'KDVIDRegressor: expected {len(self.means)} features (one per tap), got {len(features)}')
        return ([mean(feature) for mean, feature in zip(self.means, features)],
                [scale(feature) for scale, feature in zip(self.scales, features)])
