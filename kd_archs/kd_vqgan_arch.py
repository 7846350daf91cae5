"""Frozen VQGAN encoder (taming-transformers) for DCKD's contrastive loss and distribution mapping."""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.utils.registry import ARCH_REGISTRY

# taming-transformers configs/imagenet_vqgan.yaml (vqgan_imagenet_f16_1024), model.params.ddconfig
F16_1024_DDCONFIG = dict(
    double_z=False,
    z_channels=256,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 1, 2, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[16],
    dropout=0.0,
    norm_groups=32)  # not a taming key: taming's Normalize always uses 32 GroupNorm groups
INPUT_RANGES = ('[-1,1]', '[0,1]')


def group_norm(channels, groups):
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, plus a 1x1 conv shortcut when the channels change (no time embedding)."""

    def __init__(self, in_channels, out_channels, dropout, norm_groups):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, 'nin_shortcut') else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1 conv projections and a residual."""

    def __init__(self, channels, norm_groups):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = torch.softmax(q @ k.transpose(1, 2) * c**-0.5, dim=-1) @ v
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row and one column at the bottom/right."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """taming's ``Encoder``: conv_in, one level per ``ch_mult`` entry of ``num_res_blocks`` ResnetBlocks (each
    followed by an AttnBlock where the nominal resolution is in ``attn_resolutions``) and a Downsample except at
    the last level, then mid (ResnetBlock, AttnBlock, ResnetBlock), GroupNorm, swish and conv_out."""

    def __init__(self,
                 ch,
                 ch_mult,
                 num_res_blocks,
                 attn_resolutions,
                 in_channels,
                 resolution,
                 z_channels,
                 norm_groups,
                 dropout=0.0,
                 **ignored):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, ch * mult, dropout, norm_groups))
                block_in = ch * mult
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in, norm_groups))
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        """Return the encoding and the output of the first ResnetBlock of every level."""
        h, taps = self.conv_in(x), []
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if i == 0:
                    taps.append(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, 'downsample'):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h))), taps


@ARCH_REGISTRY.register()
class KDVQGANEncoder(nn.Module):
    """Encoder, ``quant_conv`` and codebook of a taming-transformers VQGAN (Esser et al., Taming Transformers for
    High-Resolution Image Synthesis, CVPR 2021), as DCKD uses them (dckd.txt Eq. 5 and 8-9).

    The state_dict keys are those of taming's ``VQModel`` (``encoder.*``, ``quant_conv.*``,
    ``quantize.embedding.weight``), so the ``state_dict`` of ``vqgan_imagenet_f16_1024``'s ``last.ckpt``
    (https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/, 29.6M parameters here), without its decoder and
    loss keys, loads strictly. ``tap_names`` are the module paths of the five feature taps: the output of the
    first ResnetBlock of every level (128/128/256/256/512 channels at 1, 1/2, 1/4, 1/8, 1/16 of the input size),
    before the level's attention, as in the authors' code.

    Args:
        embed_dim (int): Code dimension. Default: 256.
        n_embed (int): Codebook size. Default: 1024.
        ddconfig (dict | None): taming's ``ddconfig``; its keys override those of vqgan_imagenet_f16_1024
            (``F16_1024_DDCONFIG``), any other key is refused. One key is ours: ``norm_groups``, the GroupNorm
            group count (taming's 32), which a narrow encoder (``ch`` below 32) must lower. Default: None.
        input_range (str): Range of the images given to forward: '[-1,1]' maps [0, 1] images to the [-1, 1] that
            taming was trained on; '[0,1]' feeds them unchanged, as DCKD's released code does. Default: '[-1,1]'.

    Example::

        network_vqgan:
          type: KDVQGANEncoder
          input_range: '[-1,1]'    # '[0,1]' reproduces the authors' code
        path:
          pretrain_network_vqgan: experiments/pretrained_models/vqgan_imagenet_f16_1024.pth
    """

    def __init__(self, embed_dim=256, n_embed=1024, ddconfig=None, input_range='[-1,1]'):
        super().__init__()
        if input_range not in INPUT_RANGES:
            raise ValueError(f'input_range must be one of {INPUT_RANGES}, got {input_range!r}')
        unknown = set(ddconfig or {}) - set(F16_1024_DDCONFIG)
        if unknown:
            raise ValueError(f'ddconfig: unknown keys {sorted(unknown)}; the keys are {sorted(F16_1024_DDCONFIG)}')
        ddconfig = {**F16_1024_DDCONFIG, **(ddconfig or {})}
        self.input_range = input_range
        self.encoder = Encoder(**ddconfig)
        self.quant_conv = nn.Conv2d(ddconfig['z_channels'], embed_dim, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        self.tap_names = [f'encoder.down.{level}.block.0' for level in range(len(ddconfig['ch_mult']))]

    def forward(self, x, return_taps=False):
        """Encode images.

        Args:
            x (Tensor): (n, 3, H, W) images in [0, 1]; H and W multiples of 16 give whole code positions.
            return_taps (bool): Also return the features at ``tap_names``.

        Returns:
            Tensor | tuple[Tensor, list[Tensor]]: z = quant_conv(encoder(x)), (n, embed_dim, H/16, W/16), and the
            tapped features, shallow to deep, if ``return_taps``.
        """
        if self.input_range == '[-1,1]':
            x = x * 2 - 1
        h, taps = self.encoder(x)
        z = self.quant_conv(h)
        return (z, taps) if return_taps else z

    def code_distances(self, z):
        """Squared Euclidean distance of every position of z to every code, ||z||^2 + ||e||^2 - 2 z.e as taming's
        quantizer computes it (no (n*HW, n_embed, embed_dim) difference tensor).

        Args:
            z (Tensor): (n, embed_dim, H, W), e.g. the output of forward.

        Returns:
            Tensor: (n, H*W, n_embed), positions in row-major order.
        """
        codes = self.quantize.embedding.weight
        z = z.flatten(2).transpose(1, 2)
        return z.pow(2).sum(-1, keepdim=True) + codes.pow(2).sum(-1) - 2 * z @ codes.t()
