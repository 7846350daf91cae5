"""Restormer (Zamir et al., Restormer: Efficient Transformer for High-Resolution Image Restoration, CVPR 2022),
with the official state_dict layout."""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.utils.registry import ARCH_REGISTRY


class ChannelLayerNorm(nn.Module):
    """Layer normalisation over the channels of an NCHW tensor (eps 1e-5); 'BiasFree' scales without centring.

    Args:
        dim (int): Channels.
        with_bias (bool): Centre and add a bias ('WithBias') or only scale ('BiasFree').
    """

    def __init__(self, dim, with_bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        if self.bias is None:
            x = x / torch.sqrt(sigma + 1e-5) * self.weight
        else:
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias
        return x.permute(0, 3, 1, 2)


class LayerNorm(nn.Module):
    """The official wrapper (its checkpoint keys are ``norm*.body.weight``/``.bias``).

    Args:
        dim (int): Channels.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'.
    """

    def __init__(self, dim, LayerNorm_type):  # the official argument name
        super().__init__()
        self.body = ChannelLayerNorm(dim, with_bias=LayerNorm_type != 'BiasFree')

    def forward(self, x):
        return self.body(x)


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): GELU(dwconv branch 1) * dwconv branch 2.

    Args:
        dim (int): Channels.
        ffn_expansion_factor (float): Hidden channels per branch = int(dim * ffn_expansion_factor).
        bias (bool): Biases in the convolutions.
    """

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): attention across channels, per head, with a learned temperature.

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

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (
            t.reshape(b, self.num_heads, c // self.num_heads, h * w)
            for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    """Pre-norm MDTA and GDFN, each with a residual connection.

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        ffn_expansion_factor (float): GDFN expansion.
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


class OverlapPatchEmbed(nn.Module):
    """3x3 convolution from the image to ``embed_dim`` channels (the official wrapper, for its ``proj`` key)."""

    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the resolution and double the channels: 3x3 conv to n_feat / 2, then PixelUnshuffle(2)."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution and halve the channels: 3x3 conv to 2 n_feat, then PixelShuffle(2)."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


@ARCH_REGISTRY.register(suffix='basicsr')
class Restormer(nn.Module):
    """Restormer: a 4-level U-Net of transposed-attention transformer blocks (Zamir et al., CVPR 2022).

    Same constructor arguments and state_dict keys as the official ``Restormer`` (swz30/Restormer), so the released
    checkpoints load with ``strict=True``. Inputs whose sides are not multiples of 8 are reflect-padded (as the
    official test scripts do; replicate-padded when the image is too small to reflect) and the output is cropped
    back.

    Args:
        inp_channels (int): Input channels. Default: 3.
        out_channels (int): Output channels. Default: 3.
        dim (int): Channels at level 1; doubled at every level below. Default: 48.
        num_blocks (list[int]): Transformer blocks of levels 1-4 (levels 1-3: encoder and decoder each; level 4:
            the latent). Default: (4, 6, 6, 8).
        num_refinement_blocks (int): Transformer blocks after decoder level 1. Default: 4.
        heads (list[int]): Attention heads of levels 1-4. Default: (1, 2, 4, 8).
        ffn_expansion_factor (float): GDFN expansion. Default: 2.66.
        bias (bool): Biases in the convolutions. Default: False.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.
        dual_pixel_task (bool): Dual-pixel defocus deblurring (inp_channels 6): add a skip from the embedded input
            instead of the global image residual. Default: False.

    Example (the 26.1M deraining/deblurring/denoising model)::

        network_g: {type: Restormer, dim: 48, num_blocks: [4, 6, 6, 8], num_refinement_blocks: 4, heads: [1, 2, 4, 8]}
    """

    def __init__(
            self,
            inp_channels=3,
            out_channels=3,
            dim=48,
            num_blocks=(4, 6, 6, 8),
            num_refinement_blocks=4,
            heads=(1, 2, 4, 8),
            ffn_expansion_factor=2.66,
            bias=False,
            LayerNorm_type='WithBias',  # the official argument name
            dual_pixel_task=False):
        super().__init__()

        def blocks(level, num, channels=None):
            channels = channels or dim * 2**level
            return nn.Sequential(*[
                TransformerBlock(channels, heads[level], ffn_expansion_factor, bias, LayerNorm_type) for _ in range(num)
            ])

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
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
        self.refinement = blocks(0, num_refinement_blocks, channels=dim * 2)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        pad_h, pad_w = -h % 8, -w % 8
        if pad_h or pad_w:
            mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
            inp_img = F.pad(inp_img, (0, pad_w, 0, pad_h), mode=mode)

        inp_enc_level1 = self.patch_embed(inp_img)
        out_enc_level1 = self.encoder_level1(inp_enc_level1)
        out_enc_level2 = self.encoder_level2(self.down1_2(out_enc_level1))
        out_enc_level3 = self.encoder_level3(self.down2_3(out_enc_level2))
        latent = self.latent(self.down3_4(out_enc_level3))

        x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), out_enc_level3], 1))
        x = self.decoder_level3(x)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), out_enc_level2], 1))
        x = self.decoder_level2(x)
        x = self.decoder_level1(torch.cat([self.up2_1(x), out_enc_level1], 1))
        x = self.refinement(x)

        if self.dual_pixel_task:
            x = self.output(x + self.skip_conv(inp_enc_level1))
        else:
            x = self.output(x) + inp_img
        return x[:, :, :h, :w]
