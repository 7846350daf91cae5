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

    def logits_and_values(self, x):
        """Per head, the temperature-scaled cosine similarities of the query and key channels (b, heads, c / heads,
        c / heads) and the values (b, heads, c / heads, h * w)."""
        b, c, h, w = x.shape
        q, k, v = (
            t.reshape(b, self.num_heads, c // self.num_heads, h * w)
            for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return (q @ k.transpose(-2, -1)) * self.temperature, v

    def forward(self, x):
        attn, v = self.logits_and_values(x)
        return self.project_out((attn.softmax(dim=-1) @ v).reshape(x.shape))


class TransformerBlock(nn.Module):
    """Pre-norm attention and feed-forward, each with a residual connection: Restormer's block with MDTA and GDFN,
    DRSformer's with its own attention and feed-forward classes (same signatures, same keys).

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        ffn_expansion_factor (float): Feed-forward expansion.
        bias (bool): Biases in the convolutions.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'.
        attention (type): Attention class, called (dim, num_heads, bias). Default: :class:`Attention` (MDTA).
        feed_forward (type): Feed-forward class, called (dim, ffn_expansion_factor, bias). Default:
            :class:`FeedForward` (GDFN).
    """

    def __init__(self,
                 dim,
                 num_heads,
                 ffn_expansion_factor,
                 bias,
                 LayerNorm_type,
                 attention=Attention,
                 feed_forward=FeedForward):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = feed_forward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_blocks(num, dim, num_heads, **block_kwargs):
    """``num`` TransformerBlocks of ``dim`` channels in a Sequential."""
    return nn.Sequential(*[TransformerBlock(dim, num_heads, **block_kwargs) for _ in range(num)])


def pad_to_multiple(x, multiple):
    """Pad the bottom and right of an image to multiples of ``multiple``: reflect, as the official test scripts do,
    or replicate when the image is too small to reflect."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode='reflect' if pad_h < h and pad_w < w else 'replicate')


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


class TransformerUNet(nn.Module):
    """The 4-level U-Net of transformer blocks that Restormer and DRSformer share: ``build_levels`` adds the encoder
    levels, the latent and the decoder levels under the official names, in the official order; ``encode_decode``
    runs them on the embedded image. Level 1 of the decoder keeps 2 * dim channels (no reduction after its concat).
    """

    multiple = 8  # the input's sides are padded to multiples of this (three halvings)

    def build_levels(self, dim, num_blocks, heads, **block_kwargs):
        """Add the levels. ``num_blocks``/``heads``: of levels 1-4 (levels 1-3: encoder and decoder each; level 4:
        the latent); ``block_kwargs``: ffn_expansion_factor, bias, LayerNorm_type[, attention, feed_forward]."""
        bias = block_kwargs['bias']
        self.encoder_level1 = transformer_blocks(num_blocks[0], dim, heads[0], **block_kwargs)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = transformer_blocks(num_blocks[1], dim * 2, heads[1], **block_kwargs)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = transformer_blocks(num_blocks[2], dim * 4, heads[2], **block_kwargs)
        self.down3_4 = Downsample(dim * 4)
        self.latent = transformer_blocks(num_blocks[3], dim * 8, heads[3], **block_kwargs)
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = transformer_blocks(num_blocks[2], dim * 4, heads[2], **block_kwargs)
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = transformer_blocks(num_blocks[1], dim * 2, heads[1], **block_kwargs)
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = transformer_blocks(num_blocks[0], dim * 2, heads[0], **block_kwargs)

    def encode_decode(self, x):
        """From the embedded image (dim channels) to the output of decoder level 1 (2 * dim channels)."""
        out_enc_level1 = self.encoder_level1(x)
        out_enc_level2 = self.encoder_level2(self.down1_2(out_enc_level1))
        out_enc_level3 = self.encoder_level3(self.down2_3(out_enc_level2))
        latent = self.latent(self.down3_4(out_enc_level3))

        x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), out_enc_level3], 1))
        x = self.decoder_level3(x)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), out_enc_level2], 1))
        x = self.decoder_level2(x)
        return self.decoder_level1(torch.cat([self.up2_1(x), out_enc_level1], 1))


@ARCH_REGISTRY.register(suffix='basicsr')
class Restormer(TransformerUNet):
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
        block_kwargs = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type)
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.build_levels(dim, num_blocks, heads, **block_kwargs)
        self.refinement = transformer_blocks(num_refinement_blocks, dim * 2, heads[0], **block_kwargs)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        inp_img = pad_to_multiple(inp_img, self.multiple)
        inp_enc_level1 = self.patch_embed(inp_img)
        x = self.refinement(self.encode_decode(inp_enc_level1))
        if self.dual_pixel_task:
            x = self.output(x + self.skip_conv(inp_enc_level1))
        else:
            x = self.output(x) + inp_img
        return x[:, :, :h, :w]
