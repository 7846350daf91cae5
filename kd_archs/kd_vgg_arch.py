"""VGG-19 features (torchvision's layout), for SKD's image-level contrastive loss."""
import torch
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY

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

    Built with random weights; as a frozen network of a model it loads them like every frozen network, from
    ``path.pretrain_network_<name>`` (nothing is ever downloaded). The state_dict keys equal those of
    ``torchvision.models.vgg19().features`` under the prefix ``features.``: ``python -m
    datasets_prep.convert_checkpoint vgg19 vgg19-dcbb9e9d.pth experiments/pretrained_models/vgg19_features.pth``
    keeps them from torchvision's file (published at https://download.pytorch.org/models/vgg19-dcbb9e9d.pth). Inputs
    in [0, 1] (or [-1, 1], see ``input_range``) are normalised with the ImageNet mean and std; the forward stops
    after the deepest requested layer.

    Args:
        layer_names (list[str]): Layers to return, named conv{s}_{i}, relu{s}_{i} or pool{s} as in BasicSR's
            VGGFeatureExtractor. Default: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
        input_range (str): '[0,1]' or '[-1,1]' (mapped to [0, 1] first). Default: '[0,1]'.

    Example::

        network_vgg:
          type: KDVGG19Features
          layer_names: [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]
        path:
          pretrain_network_vgg: experiments/pretrained_models/vgg19_features.pth
    """

    def __init__(self,
                 layer_names=('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'),
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
