"""DRSformer (Chen et al., Learning A Sparse Transformer Network for Effective Image Deraining, CVPR 2023), with the
official state_dict layout (the default ``DRSformer_arch.py``, with MEFC)."""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from .kd_restormer_arch import Downsample, LayerNorm, OverlapPatchEmbed, Upsample


class FeedForward(nn.Module):
    """Mixed-scale feed-forward network (MSFN): parallel 3x3 and 5x5 depth-wise branches whose halves are mixed
    across scales by a second pair of grouped convolutions.

    Args:
        dim (int): Channels.
        ffn_expansion_factor (float): Hidden channels = int(dim * ffn_expansion_factor).
        bias (bool): Biases in the convolutions.
    """

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(hidden * 2, hidden * 2, 5, padding=2, groups=hidden * 2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(hidden * 2, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(hidden * 2, hidden, 5, padding=2, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden * 2, dim, 1, bias=bias)

    def forward(self, x):
        x = self.project_in(x)
        x1_3, x2_3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)
        x1_5, x2_5 = F.relu(self.dwconv5x5(x)).chunk(2, dim=1)
        x1 = F.relu(self.dwconv3x3_1(torch.cat([x1_3, x1_5], 1)))
        x2 = F.relu(self.dwconv5x5_1(torch.cat([x2_3, x2_5], 1)))
        return self.project_out(torch.cat([x1, x2], 1))


class Attention(nn.Module):
    """Top-k sparse attention (TKSA): transposed (channel) attention as in Restormer, where each query channel keeps
    only its top 1/2, 2/3, 3/4 and 4/5 keys; the four results are mixed with learned weights ``attn1..attn4``.

    Args:
        dim (int): Channels.
        num_heads (int): Heads; dim must be divisible by it.
        bias (bool): Biases in the convolutions.
    """

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (
            t.reshape(b, self.num_heads, c // self.num_heads, h * w)
            for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        channels = q.shape[2]
        keeps = (int(channels / 2), int(channels * 2 / 3), int(channels * 3 / 4), int(channels * 4 / 5))
        out = 0
        for keep, weight in zip(keeps, (self.attn1, self.attn2, self.attn3, self.attn4)):
            # a top-k of its own for each (not prefixes of one): tied logits then pick the official code's keys
            mask = torch.zeros_like(attn, dtype=torch.bool).scatter_(-1, attn.topk(keep, dim=-1).indices, True)
            out = out + (attn.masked_fill(~mask, float('-inf')).softmax(dim=-1) @ v) * weight
        return self.project_out(out.reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    """Sparse transformer block (STB): pre-norm TKSA and MSFN, each with a residual connection.

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        ffn_expansion_factor (float): MSFN expansion.
        bias (bool): Biases in the convolutions.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'.
    """

    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Op(nn.Module):
    """Bias-free layers in sequence, stored under ``op`` (the official key prefix of MEFC's operations)."""

    def __init__(self, *layers):
        super().__init__()
        self.op = nn.Sequential(*layers)

    def forward(self, x):
        return self.op(x)


def sep_conv(c, k):
    """Separable convolution: (depth-wise k x k, point-wise) twice with a ReLU between."""
    return Op(
        nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False), nn.ReLU(),
        nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False))


def dil_conv(c, k):
    """Dilated (rate 2) depth-wise k x k convolution, then point-wise."""
    return Op(nn.Conv2d(c, c, k, padding=k - 1, dilation=2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False))


class OperationLayer(nn.Module):
    """The eight experts (separable 1/3/5/7, dilated 3/5/7, 3x3 average pooling), each scaled by its per-image
    weight, concatenated and fused by a 1x1 convolution and a ReLU.

    Args:
        c (int): Channels.
    """

    def __init__(self, c):
        super().__init__()
        self._ops = nn.ModuleList([sep_conv(c, k) for k in (1, 3, 5, 7)] + [dil_conv(c, k) for k in (3, 5, 7)] +
                                  [nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)])
        self._out = nn.Sequential(nn.Conv2d(c * len(self._ops), c, 1, bias=False), nn.ReLU())

    def forward(self, x, weights):
        return self._out(torch.cat([op(x) * w.view(-1, 1, 1, 1) for op, w in zip(self._ops, weights.t())], 1))


class GroupOLs(nn.Module):
    """A 1x1 conv + ReLU, then ``steps`` residual operation layers.

    Args:
        steps (int): Operation layers.
        c (int): Channels.
    """

    def __init__(self, steps, c):
        super().__init__()
        self.preprocess = Op(nn.Conv2d(c, c, 1, bias=False), nn.ReLU())
        self._ops = nn.ModuleList([OperationLayer(c) for _ in range(steps)])

    def forward(self, x, weights):
        x = self.preprocess(x)
        for i, op in enumerate(self._ops):
            x = F.relu(op(x, weights[:, i]) + x)
        return x


class OALayer(nn.Module):
    """Predicts from the globally pooled features the (unnormalised) weights of ``num_ops`` experts per step.

    Args:
        channel (int): Input channels.
        k (int): Steps.
        num_ops (int): Experts per step.
    """

    def __init__(self, channel, k, num_ops):
        super().__init__()
        self.k, self.num_ops = k, num_ops
        self.ca_fc = nn.Sequential(
            nn.Linear(channel, k * num_ops * 2), nn.ReLU(), nn.Linear(k * num_ops * 2, k * num_ops))

    def forward(self, x):
        return self.ca_fc(x.mean((2, 3))).view(-1, self.k, self.num_ops)


class MEFC(nn.Module):
    """Mixture of experts feature compensator (the official class ``subnet``): softmax expert weights from an
    OALayer drive a GroupOLs (``layers`` holds the pair, as in the official keys).

    Args:
        dim (int): Channels.
        steps (int): Operation layers. Default: 4.
    """

    def __init__(self, dim, steps=4):
        super().__init__()
        self.layers = nn.ModuleList([OALayer(dim, steps, 8), GroupOLs(steps, dim)])

    def forward(self, x):
        weights = self.layers[0](x).softmax(dim=-1)
        return self.layers[1](x, weights)


@ARCH_REGISTRY.register(suffix='basicsr')
class DRSformer(nn.Module):
    """DRSformer: a Restormer-style 4-level U-Net of sparse transformer blocks (top-k attention, mixed-scale FFN),
    with MEFC after the embedding and as the refinement stage (Chen et al., Learning A Sparse Transformer Network
    for Effective Image Deraining, CVPR 2023).

    Same constructor arguments and state_dict keys as the official ``DRSformer`` (cschenxiang/DRSformer,
    ``DRSformer_arch.py``, the variant with MEFC), so the released checkpoints load with ``strict=True``. Inputs
    whose sides are not multiples of 8 are reflect-padded (as the official test script does; replicate-padded when
    the image is too small to reflect) and the output is cropped back.

    Args:
        inp_channels (int): Input channels. Default: 3.
        out_channels (int): Output channels. Default: 3.
        dim (int): Channels at level 1; doubled at every level below. Default: 48.
        num_blocks (list[int]): Transformer blocks of levels 1-4 (levels 1-3: encoder and decoder each; level 4:
            the latent). The paper's five numbers "4,4,6,6,8" are (4, 6, 6, 8) here. Default: (4, 6, 6, 8).
        heads (list[int]): Attention heads of levels 1-4. Default: (1, 2, 4, 8).
        ffn_expansion_factor (float): MSFN expansion. Default: 2.66.
        bias (bool): Biases in the convolutions. Default: False.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.

    Example (the 33.7M deraining model)::

        network_g: {type: DRSformer, dim: 48, num_blocks: [4, 6, 6, 8], heads: [1, 2, 4, 8]}
    """

    def __init__(self,
                 inp_channels=3,
                 out_channels=3,
                 dim=48,
                 num_blocks=(4, 6, 6, 8),
                 heads=(1, 2, 4, 8),
                 ffn_expansion_factor=2.66,
                 bias=False,
                 LayerNorm_type='WithBias'):  # the official argument name
        super().__init__()

        def blocks(level, num, channels=None):
            channels = channels or dim * 2**level
            return nn.Sequential(*[
                TransformerBlock(channels, heads[level], ffn_expansion_factor, bias, LayerNorm_type) for _ in range(num)
            ])

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level0 = MEFC(dim)
        self.encoder_level1 = blocks(0, num_blocks[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = blocks(1, num_blocks[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = blocks(2, num_blocks[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = blocks(3, num_blocks[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = blocks(2, num_blocks[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = blocks(1, num_blocks[1])
        self.up2_1 = Upsample(dim * 2)
        # level 1 of the decoder and the refinement keep 2 * dim channels (no channel reduction after the concat)
        self.decoder_level1 = blocks(0, num_blocks[0], channels=dim * 2)
        self.refinement = MEFC(dim * 2)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        pad_h, pad_w = -h % 8, -w % 8
        if pad_h or pad_w:
            mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
            inp_img = F.pad(inp_img, (0, pad_w, 0, pad_h), mode=mode)

        out_enc_level1 = self.encoder_level1(self.encoder_level0(self.patch_embed(inp_img)))
        out_enc_level2 = self.encoder_level2(self.down1_2(out_enc_level1))
        out_enc_level3 = self.encoder_level3(self.down2_3(out_enc_level2))
        latent = self.latent(self.down3_4(out_enc_level3))

        x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), out_enc_level3], 1))
        x = self.decoder_level3(x)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), out_enc_level2], 1))
        x = self.decoder_level2(x)
        x = self.decoder_level1(torch.cat([self.up2_1(x), out_enc_level1], 1))
        x = self.output(self.refinement(x)) + inp_img
        return x[:, :, :h, :w]
