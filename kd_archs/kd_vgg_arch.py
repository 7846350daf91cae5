"""VGG-19 features from a local torchvision weight file, for SKD's image-level contrastive loss."""
import os

import torch
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY

VGG19_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'
# torchvision's vgg19 'E' configuration: output channels of each conv, 'M' for a 2x2 max-pool
VGG19_CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M']
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layers():
    """torchvision's ``vgg19().features`` (without in-place ReLUs, so conv outputs can be tapped) and the name of
    each of its modules: conv{stage}_{i}, relu{stage}_{i}, pool{stage}."""
    layers, names, in_channels, stage, index = [], [], 3, 1, 1
    for item in VGG19_CFG:
        if item == 'M':
            layers.append(nn.MaxPool2d(2, 2))
            names.append(f'pool{stage}')
            stage, index = stage + 1, 1
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU()]
            names += [f'conv{stage}_{index}', f'relu{stage}_{index}']
            in_channels, index = item, index + 1
    return nn.Sequential(*layers), names


@ARCH_REGISTRY.register()
class KDVGG19Features(nn.Module):
    """VGG-19 feature extractor (Simonyan & Zisserman, ICLR 2015) for SKD's contrastive loss φ (skd.txt Eq. 4).

    The weights come only from a local file in torchvision's format (its ``features.*`` keys are used, the
    classifier is ignored); nothing is ever downloaded. The state_dict keys equal those of
    ``torchvision.models.vgg19().features`` under the prefix ``features.``. Inputs in [0, 1] (or [-1, 1], see
    ``input_range``) are normalised with the ImageNet mean and std; the forward stops after the deepest
    requested layer.

    Args:
        layer_names (list[str]): Layers to return, named conv{s}_{i}, relu{s}_{i} or pool{s} as in BasicSR's
            VGGFeatureExtractor. Default: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
        load_path (str | None): torchvision's vgg19-dcbb9e9d.pth, published at
            https://download.pytorch.org/models/vgg19-dcbb9e9d.pth. Required unless ``pretrained`` is false.
        pretrained (bool): Load ``load_path``; false (random weights) is for tests only. Default: True.
        input_range (str): '[0,1]' or '[-1,1]' (mapped to [0, 1] first). Default: '[0,1]'.

    Example::

        network_vgg:
          type: KDVGG19Features
          layer_names: [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]
          load_path: experiments/pretrained_models/vgg19-dcbb9e9d.pth
    """

    def __init__(self,
                 layer_names=('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'),
                 load_path=None,
                 pretrained=True,
                 input_range='[0,1]'):
        super().__init__()
        self.features, self.names = vgg19_layers()
        unknown = [name for name in layer_names if name not in self.names]
        if unknown:
            raise ValueError(f'KDVGG19Features: unknown layer_names {unknown}; choose from {self.names}')
        if input_range not in ('[0,1]', '[-1,1]'):
            raise ValueError(f"KDVGG19Features: input_range must be '[0,1]' or '[-1,1]', got {input_range!r}")
        self.layer_names = list(layer_names)
        self.input_range = input_range
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_torchvision(load_path)

    def load_torchvision(self, load_path):
        """Load the ``features.*`` weights of a torchvision VGG-19 state_dict file, strictly."""
        if load_path is None or not os.path.isfile(load_path):
            raise FileNotFoundError(
                f'KDVGG19Features: load_path {load_path!r} is not a file. Download torchvision\'s VGG-19 weights '
                f'(vgg19-dcbb9e9d.pth, published at {VGG19_URL}) and set load_path to it; pretrained: false '
                '(random weights) is for tests only.')
        state = torch.load(load_path, map_location='cpu', weights_only=True)
        features = {key: value for key, value in state.items() if key.startswith('features.')}
        if not features:
            raise ValueError(f'KDVGG19Features: {load_path} has no features.* keys; it is not a torchvision '
                             f'VGG-19 state_dict (expected vgg19-dcbb9e9d.pth from {VGG19_URL})')
        self.load_state_dict(features, strict=True)

    def forward(self, x):
        """Return a dict {layer name: feature} for ``layer_names``, from (n, 3, H, W) images."""
        if self.input_range == '[-1,1]':
            x = (x + 1) / 2
        x = (x - self.mean) / self.std
        out, last = {}, max(self.names.index(name) for name in self.layer_names)
        for name, layer in zip(self.names[:last + 1], self.features):
            x = layer(x)
            if name in self.layer_names:
                out[name] = x
        return out
