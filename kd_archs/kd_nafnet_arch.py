"""NAFNet (Chen et al., Simple Baselines for Image Restoration, ECCV 2022), with the official state_dict layout."""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.utils.registry import ARCH_REGISTRY


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channels of an NCHW tensor, with a per-channel affine transform."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * x + self.bias.view(1, -1, 1, 1)


def simple_gate(x):
    """SimpleGate: split the channels in two halves and multiply them."""
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block: a gated depth-wise conv branch with simplified channel attention (SCA),
    then a gated feed-forward branch, each added back with a learned per-channel scale (beta, gamma).

    Args:
        c (int): Channels.
    """

    def __init__(self, c):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)

    def forward(self, inp):
        x = simple_gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


@ARCH_REGISTRY.register(suffix='basicsr')
class NAFNet(nn.Module):
    """NAFNet: a U-Net of NAFBlocks (Chen et al., Simple Baselines for Image Restoration, ECCV 2022).

    Same constructor arguments and state_dict keys as the official ``NAFNet`` (megvii-research/NAFNet), so the
    released checkpoints load with ``strict=True``. Inputs of any size are zero-padded to a multiple of
    ``2 ** len(enc_blk_nums)`` and the output is cropped back, as in the official code.

    Args:
        img_channel (int): Channels of the input and output image. Default: 3.
        width (int): Channels at the first level; doubled at every downsampling. Default: 16.
        middle_blk_num (int): NAFBlocks at the bottleneck. Default: 1.
        enc_blk_nums (list[int]): NAFBlocks of each encoder level. Default: () (no levels).
        dec_blk_nums (list[int]): NAFBlocks of each decoder level, deepest first. Default: () (no levels).

    Example (GoPro NAFNet-width32, 17.1M parameters)::

        network_g: {type: NAFNet, width: 32, enc_blk_nums: [1, 1, 1, 28], middle_blk_num: 1, dec_blk_nums: [1, 1, 1, 1]}
    """

    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        encoders, downs, ups, decoders = [], [], [], []
        chan = width
        for num in enc_blk_nums:
            encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        # the official registration order, which is also the order of the checkpoint's keys
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.middle_blks = middle_blks
        self.ups = nn.ModuleList(ups)
        self.downs = nn.ModuleList(downs)
        self.multiple = 2**len(self.encoders)  # the input's sides are padded to multiples of this

    def forward(self, inp):
        h, w = inp.shape[-2:]
        inp = F.pad(inp, (0, -w % self.multiple, 0, -h % self.multiple))
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1]):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]


class LocalAvgPool2d(nn.Module):
    """Mean over a sliding ``kernel_size`` window, replicate-padded back to the input size; the global mean (as in
    training) when the window covers the whole input: the Test-time Local Converter (TLC) of Chu et al., ECCV 2022.

    Args:
        kernel_size (tuple[int]): Window height and width.
    """

    def __init__(self, kernel_size):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x):
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        if kh >= h and kw >= w:
            return F.adaptive_avg_pool2d(x, 1)
        kh, kw = min(h, kh), min(w, kw)
        s = F.pad(x.cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # s[i, j] = sum of x[:i, :j]
        out = (s[..., kh:, kw:] + s[..., :-kh, :-kw] - s[..., :-kh, kw:] - s[..., kh:, :-kw]) / (kh * kw)
        dh, dw = h - out.shape[-2], w - out.shape[-1]
        return F.pad(out, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode='replicate')


@ARCH_REGISTRY.register(suffix='basicsr')
class NAFNetLocal(NAFNet):
    """NAFNet (Chen et al., ECCV 2022) whose channel attention pools over a local window (TLC, Chu et al., ECCV 2022).

    The official GoPro/REDS option files use it. Every SCA global pooling becomes a ``LocalAvgPool2d`` whose window
    is 1.5x the feature size that a ``train_size`` input has at that level, so on training-size patches it is
    the plain NAFNet. Same weights as ``NAFNet``.

    Args:
        train_size (tuple[int]): NCHW size of the training patches. Default: (1, 3, 256, 256).
        fast_imp (bool): The official class's faster approximation of the local pooling. Only ``False`` (the
            official default and what its option files use) is provided; ``True`` is refused. Default: False.
        Other arguments: see ``NAFNet``.

    Example::

        network_g:
          {type: NAFNetLocal, width: 32, enc_blk_nums: [1, 1, 1, 28], middle_blk_num: 1, dec_blk_nums: [1, 1, 1, 1]}
    """

    def __init__(self, *args, train_size=(1, 3, 256, 256), fast_imp=False, **kwargs):
        if fast_imp:
            raise ValueError('NAFNetLocal: fast_imp: true (the official approximate local pooling) is not provided; '
                             'set fast_imp: false (the official default): the exact pooling, same weights')
        super().__init__(*args, **kwargs)
        train_h, train_w = train_size[-2:]
        base_h, base_w = int(train_h * 1.5), int(train_w * 1.5)
        padded_h, padded_w = train_h + -train_h % self.multiple, train_w + -train_w % self.multiple
        depth = len(self.encoders)
        stages = [(level, stage) for level, stage in enumerate(self.encoders)] + [(depth, self.middle_blks)]
        stages += [(depth - 1 - i, stage) for i, stage in enumerate(self.decoders)]
        for level, stage in stages:
            kernel_size = ((padded_h >> level) * base_h // train_h, (padded_w >> level) * base_w // train_w)
            for block in stage:
                block.sca[0] = LocalAvgPool2d(kernel_size)
