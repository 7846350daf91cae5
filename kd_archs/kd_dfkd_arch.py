"""DFKD's generator (Zhang et al., Data-Free Knowledge Distillation for Image Super-Resolution, CVPR 2021): noise in,
a synthetic input image of the distilled networks out."""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F


@ARCH_REGISTRY.register()
class KDDFKDGenerator(nn.Module):
    """The generator G of DFKD: a latent vector z ~ N(0, I) to an image G(z) in [0, 1], the architecture of the
    authors' released ``GeneratorINE1`` (Efficient-Computing, ``Data-Efficient-Model-Compression/DFSR/zsnet.py``),
    written anew:

    z -> Linear(latent_dim, num_feat·(s/4)²) -> reshape (num_feat, s/4, s/4) -> InstanceNorm(affine)
    -> nearest x2 -> conv3x3(num_feat, num_feat) -> InstanceNorm(affine, eps) -> LeakyReLU(0.2)
    -> nearest x2 -> conv3x3(num_feat, num_feat/2) -> InstanceNorm(affine, eps) -> LeakyReLU(0.2)
    -> conv3x3(num_feat/2, out_channels) -> tanh -> (x + 1)/2

    with s = ``img_size``; linear and convolution weights are drawn with Kaiming's normal initialisation (biases keep
    PyTorch's default), as the authors' ``_weights_init``. The authors' two hidden InstanceNorms use eps = 0.8 (the
    first keeps 1e-5): ``norm_eps``.

    Where this differs from the authors' use: they build one generator per SR scale (x2, x3, x4) at 48/scale pixels
    and one image channel (Y); here one generator makes the colour input of a same-size restoration network at the
    training patch size (``img_size``: the Linear layer then has latent_dim·num_feat·(s/4)² weights, 33.6M at s = 128,
    latent 256, num_feat 128).

    Args:
        img_size (int): Side s of the generated image, a multiple of 4.
        latent_dim (int): Dimension of z (the authors' ``--latent``: 256). Default: 256.
        out_channels (int): Channels of the generated image (3: RGB). Default: 3.
        num_feat (int): Channels of the first two stages (the authors': 128); the last hidden stage has half.
            Default: 128.
        norm_eps (float): eps of the two hidden InstanceNorms (the authors': 0.8). Default: 0.8.

    Example::

        network_gen: {type: KDDFKDGenerator, img_size: 128, latent_dim: 256, out_channels: 3, num_feat: 128,
                      norm_eps: 0.8}
    """

    def __init__(self, img_size, latent_dim=256, out_channels=3, num_feat=128, norm_eps=0.8):
        super().__init__()
        if not isinstance(img_size, int) or img_size < 4 or img_size % 4:
            raise ValueError(f'img_size = {img_size!r}: the generator upsamples twice by 2, so it must be a positive '
                             'multiple of 4')
        if num_feat < 2 or num_feat % 2:
            raise ValueError(f'num_feat = {num_feat!r}: must be an even number (the last hidden stage has half)')
        self.img_size, self.latent_dim, self.num_feat = img_size, latent_dim, num_feat
        self.init_size = img_size // 4
        self.project = nn.Linear(latent_dim, num_feat * self.init_size**2)
        self.norm0 = nn.InstanceNorm2d(num_feat, affine=True)
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(num_feat, eps=norm_eps, affine=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat // 2, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(num_feat // 2, eps=norm_eps, affine=True)
        self.conv_last = nn.Conv2d(num_feat // 2, out_channels, 3, padding=1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, z):
        """
        Args:
            z (Tensor): (B, latent_dim) latent vectors.

        Returns:
            Tensor: (B, out_channels, img_size, img_size) images in [0, 1].
        """
        x = self.project(z).view(z.shape[0], self.num_feat, self.init_size, self.init_size)
        x = F.interpolate(self.norm0(x), scale_factor=2)
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.norm2(self.conv2(x)), 0.2)
        return (torch.tanh(self.conv_last(x)) + 1) / 2
