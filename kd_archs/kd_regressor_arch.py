"""Trainable regressors that map student features to the teacher's channels (one per feature tap)."""
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class KDConvRegressor(nn.Module):
    """One stack of 1x1 convolutions per tapped feature, student channels -> teacher channels.

    ``num_layers: 1`` is FitNet's hint regressor (Romero et al., ICLR 2015); ``num_layers: 5`` with PReLU between
    the convolutions is FACD's deep regressor DR (facd.txt, Eq. 4). Hidden layers keep the teacher's width.

    Args:
        in_channels (list[int]): Student channels at each tap.
        out_channels (list[int]): Teacher channels at each tap.
        num_layers (int): 1x1 convolutions per tap. Default: 1.

    Example::

        network_reg: {type: KDConvRegressor, in_channels: [64, 64, 64], out_channels: [256, 256, 256], num_layers: 1}
    """

    def __init__(self, in_channels, out_channels, num_layers=1):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(f'in_channels {in_channels} and out_channels {out_channels} must list the same taps')
        if num_layers < 1:
            raise ValueError(f'num_layers must be at least 1, got {num_layers}')
        self.regressors = nn.ModuleList(
            self._stack(c_in, c_out, num_layers) for c_in, c_out in zip(in_channels, out_channels))

    @staticmethod
    def _stack(c_in, c_out, num_layers):
        layers = [nn.Conv2d(c_in, c_out, 1)]
        for _ in range(num_layers - 1):
            layers += [nn.PReLU(c_out), nn.Conv2d(c_out, c_out, 1)]
        return nn.Sequential(*layers)

    def forward(self, features):
        """Map a list of student features (one per tap, NCHW) to a list with the teacher's channels."""
        if len(features) != len(self.regressors):
            raise ValueError(f'expected {len(self.regressors)} features (one per tap), got {len(features)}')
        return [regressor(feature) for regressor, feature in zip(self.regressors, features)]
