"""DRSformer (Chen et al., Learning A Sparse Transformer Network for Effective Image Deraining, CVPR 2023), with the
official state_dict layout (the default ``DRSformer_arch.py``, with MEFC)."""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from .kd_restormer_arch import Attention as MDTA
from .kd_restormer_arch import OverlapPatchEmbed, TransformerUNet, pad_to_multiple


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


class Attention(MDTA):
    """Top-k sparse attention (TKSA): Restormer's transposed (channel) attention, where each query channel keeps
    only its top 1/2, 2/3, 3/4 and 4/5 keys; the four results are mixed with learned weights ``attn1..attn4``.

    Args:
        dim (int): Channels.
        num_heads (int): Heads; dim must be divisible by it.
        bias (bool): Biases in the convolutions.
    """

    def __init__(self, dim, num_heads, bias):
        super().__init__(dim, num_heads, bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    def forward(self, x):
        attn, v = self.logits_and_values(x)
        channels = attn.shape[-1]
        keeps = (int(channels / 2), int(channels * 2 / 3), int(channels * 3 / 4), int(channels * 4 / 5))
        out = 0
        for keep, weight in zip(keeps, (self.attn1, self.attn2, self.attn3, self.attn4)):
            # a top-k of its own for each (not prefixes of one): tied logits then pick the official code's keys
            mask = torch.zeros_like(attn, dtype=torch.bool).scatter_(-1, attn.topk(keep, dim=-1).indices, True)
            out = out + (attn.masked_fill(~mask, float('-inf')).softmax(dim=-1) @ v) * weight
        return self.project_out(out.reshape(x.shape))


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
class DRSformer(TransformerUNet):
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
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level0 = MEFC(dim)
        self.build_levels(
            dim,
            num_blocks,
            heads,
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            LayerNorm_type=LayerNorm_type,
            attention=Attention,
            feed_forward=FeedForward)
        self.refinement = MEFC(dim * 2)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        inp_img = pad_to_multiple(inp_img, self.multiple)
        x = self.encode_decode(self.encoder_level0(self.patch_embed(inp_img)))
        x = self.output(self.refinement(x)) + inp_img
        return x[:, :, :h, :w]
