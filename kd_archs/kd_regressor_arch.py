"""Trainable regressors that map student features to the teacher's channels (one per feature tap)."""
import torch.nn.functional as F
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


def normalize_per_sample(feature):
    """FACD Eq. 3, F̂ = F / ‖F‖₂ with the norm over each sample's (C, H, W): ``F.normalize(F.flatten(1), dim=1)``
    (which divides by max(‖F‖₂, 1e-12)). The same formula as in kd_losses/kd_facd_loss.py."""
    return F.normalize(feature.flatten(1), dim=1).view_as(feature)


@ARCH_REGISTRY.register()
class KDConvRegressor(nn.Module):
    """One stack of 1x1 convolutions per tapped feature, student channels -> teacher channels.

    ``num_layers: 1`` is FitNet's hint regressor (Romero et al., ICLR 2015); ``num_layers: 5`` with PReLU between
    the convolutions is FACD's deep regressor DR (facd.txt, Eq. 4). Hidden layers keep the teacher's width.
    ``normalize_input: true`` first divides each sample's feature map by its L2 norm over (C, H, W), FACD's Eq. 3
    (``normalize_per_sample``: ``F.normalize(F.flatten(1), dim=1)``), so that DR sees F̂ˢ as Eq. 4 prints.

    Args:
        in_channels (list[int]): Student channels at each tap.
        out_channels (list[int]): Teacher channels at each tap.
        num_layers (int): 1x1 convolutions per tap. Default: 1.
        normalize_input (bool): Normalise each sample's features before the convolutions (FACD). Default: False.

    Example::

        network_reg: {type: KDConvRegressor, in_channels: [64, 64, 64], out_channels: [256, 256, 256], num_layers: 1}
        # FACD's DR:
        network_reg: {type: KDConvRegressor, in_channels: [64, 64, 64], out_channels: [256, 256, 256],
                      num_layers: 5, normalize_input: true}
    """

    def __init__(self, in_channels, out_channels, num_layers=1, normalize_input=False):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(f'in_channels {in_channels} and out_channels {out_channels} must list the same taps')
        if num_layers < 1:
            raise ValueError(f'num_layers must be at least 1, got {num_layers}')
        self.normalize_input = normalize_input
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
        if self.normalize_input:
            features = [normalize_per_sample(feature) for feature in features]
        return [regressor(feature) for regressor, feature in zip(self.regressors, features)]
