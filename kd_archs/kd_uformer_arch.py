"""Uformer (Wang et al., Uformer: A General U-Shaped Transformer for Image Restoration, CVPR 2022), with the official
state_dict layout."""
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from basicsr.archs.swinir_arch import DropPath, window_partition, window_reverse
from basicsr.utils.registry import ARCH_REGISTRY

from .kd_swin_mask import shifted_window_mask


def to_map(x, h, w):
    """Tokens (B, H*W, C) to a feature map (B, C, H, W), a channels-last view (convolutions keep that format)."""
    return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)


def to_tokens(x):
    """Feature map (B, C, H, W) to contiguous tokens (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2).contiguous()


class LinearProjection(nn.Module):
    """Queries, keys and values of the tokens by linear layers (the official ``token_projection='linear'``).

    Args:
        dim (int): Channels.
        heads (int): Heads.
        bias (bool): Biases in the linear layers.
    """

    def __init__(self, dim, heads, bias=True):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim // heads * heads, bias=bias)
        self.to_kv = nn.Linear(dim, dim // heads * heads * 2, bias=bias)

    def forward(self, x):
        b, n, c = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.to_kv(x).reshape(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias.

    Args:
        dim (int): Channels.
        win_size (int): Window side.
        num_heads (int): Heads.
        qkv_bias (bool): Biases in the query/key/value projections.
        qk_scale (float | None): Scale of the attention logits; None for head_dim ** -0.5.
        attn_drop (float): Dropout on the attention weights.
        proj_drop (float): Dropout after the output projection.
    """

    def __init__(self, dim, win_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0., proj_drop=0.):
        super().__init__()
        self.win_size = win_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_size - 1)**2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(win_size), torch.arange(win_size), indexing='ij')).flatten(1)
        relative = coords[:, :, None] - coords[:, None, :] + win_size - 1  # 2, N, N; each in [0, 2 win - 2]
        self.register_buffer('relative_position_index', relative[0] * (2 * win_size - 1) + relative[1])
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)
        self.qkv = LinearProjection(dim, num_heads, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(b // num_windows, num_windows, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(b, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class LeFF(nn.Module):
    """Locally-enhanced feed-forward network: linear, GELU, depth-wise 3x3 conv on the token map, GELU, linear.

    Args:
        dim (int): Channels.
        hidden_dim (int): Hidden channels.
    """

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden_dim, dim))

    def forward(self, x, h, w):
        return self.linear2(to_tokens(self.dwconv(to_map(self.linear1(x), h, w))))


class LeWinTransformerBlock(nn.Module):
    """Locally-enhanced window transformer block: (shifted-)window attention with an optional learned modulator
    added to every window's tokens, then LeFF, each pre-norm with a residual connection.

    As in the official code, a level whose training resolution is not larger than ``win_size`` uses that resolution
    as its window and does not shift.

    Args:
        dim (int): Channels.
        input_resolution (tuple[int]): Training resolution of this level.
        num_heads (int): Attention heads.
        win_size (int): Window side.
        shift_size (int): Cyclic shift of the windows (0: none).
        mlp_ratio (float): LeFF hidden channels = int(dim * mlp_ratio).
        qkv_bias (bool): Biases in the query/key/value projections.
        qk_scale (float | None): Scale of the attention logits; None for head_dim ** -0.5.
        drop (float): Dropout after the attention projection.
        attn_drop (float): Dropout on the attention weights.
        drop_path (float): Stochastic depth rate.
        norm_layer (type): Normalisation layer class.
        modulator (bool): Add a learned (win_size ** 2, dim) modulator to the windows before attention.
    """

    def __init__(self,
                 dim,
                 input_resolution,
                 num_heads,
                 win_size=8,
                 shift_size=0,
                 mlp_ratio=4.,
                 qkv_bias=True,
                 qk_scale=None,
                 drop=0.,
                 attn_drop=0.,
                 drop_path=0.,
                 norm_layer=nn.LayerNorm,
                 modulator=False):
        super().__init__()
        self.win_size, self.shift_size = win_size, shift_size
        if min(input_resolution) <= win_size:
            self.win_size, self.shift_size = min(input_resolution), 0
        if modulator and self.win_size != win_size:
            raise ValueError(f'A modulator needs windows of {win_size} x {win_size}, but this level trains at '
                             f'{input_resolution}: increase img_size or decrease win_size.')
        self.modulator = nn.Embedding(win_size * win_size, dim) if modulator else None
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.win_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = LeFF(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w):
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        mask, win = None, self.win_size
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shifted_window_mask(h, w, win, self.shift_size).to(x)
        windows = window_partition(x, win).view(-1, win * win, c)
        if self.modulator is not None:
            windows = windows + self.modulator.weight
        x = window_reverse(self.attn(windows, mask).view(-1, win, win, c), win, h, w)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class BasicUformerLayer(nn.Module):
    """``depth`` LeWin blocks; with ``shift_flag`` every second block shifts its windows by half a window.

    Args:
        dim (int): Channels.
        input_resolution (tuple[int]): Training resolution of this level.
        depth (int): Blocks.
        num_heads (int): Attention heads.
        win_size (int): Window side.
        drop_path (list[float]): Stochastic depth rate of each block.
        use_checkpoint (bool): Recompute the blocks in the backward pass to save memory.
        shift_flag (bool): Shift the windows of every second block.
        **block_kwargs: mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, norm_layer, modulator of the blocks.
    """

    def __init__(self,
                 dim,
                 input_resolution,
                 depth,
                 num_heads,
                 win_size,
                 drop_path,
                 use_checkpoint=False,
                 shift_flag=True,
                 **block_kwargs):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            LeWinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                win_size,
                shift_size=win_size // 2 if shift_flag and i % 2 else 0,
                drop_path=drop_path[i],
                **block_kwargs) for i in range(depth)
        ])

    def forward(self, x, h, w):
        for block in self.blocks:
            x = checkpoint(block, x, h, w, use_reentrant=False) if self.use_checkpoint else block(x, h, w)
        return x


class MapLayers(nn.Module):
    """Layers applied to the token map as an image: tokens (B, H*W, C) -> map (B, C, H, W) -> ``layers`` -> tokens.
    The layers are a Sequential under the official attribute ``name`` (checkpoint keys ``<name>.0.weight`` ...).

    Args:
        name (str): Attribute of the Sequential.
        *layers (nn.Module): The layers.
        tokens_in (bool): The input is tokens (False: an image). Default: True.
        tokens_out (bool): Return tokens (False: the map). Default: True.
    """

    def __init__(self, name, *layers, tokens_in=True, tokens_out=True):
        super().__init__()
        self.name, self.tokens_in, self.tokens_out = name, tokens_in, tokens_out
        self.add_module(name, nn.Sequential(*layers))

    def forward(self, x, h=None, w=None):
        x = getattr(self, self.name)(to_map(x, h, w) if self.tokens_in else x)
        return to_tokens(x) if self.tokens_out else x


class Downsample(MapLayers):
    """Halve the token map with a 4x4 stride-2 convolution."""

    def __init__(self, in_channel, out_channel):
        super().__init__('conv', nn.Conv2d(in_channel, out_channel, 4, stride=2, padding=1))


class Upsample(MapLayers):
    """Double the token map with a 2x2 stride-2 transposed convolution."""

    def __init__(self, in_channel, out_channel):
        super().__init__('deconv', nn.ConvTranspose2d(in_channel, out_channel, 2, stride=2))


class InputProj(MapLayers):
    """Image to tokens: 3x3 convolution and LeakyReLU."""

    def __init__(self, in_channel, out_channel):
        super().__init__(
            'proj', nn.Conv2d(in_channel, out_channel, 3, padding=1), nn.LeakyReLU(inplace=True), tokens_in=False)


class OutputProj(MapLayers):
    """Tokens to image: 3x3 convolution."""

    def __init__(self, in_channel, out_channel):
        super().__init__('proj', nn.Conv2d(in_channel, out_channel, 3, padding=1), tokens_out=False)


@ARCH_REGISTRY.register(suffix='basicsr')
class Uformer(nn.Module):
    """Uformer: a 4-level U-Net of locally-enhanced window transformer blocks with learned modulators in the decoder
    (Wang et al., Uformer: A General U-Shaped Transformer for Image Restoration, CVPR 2022).

    Same constructor arguments and state_dict keys as the official ``Uformer`` (ZhendongWang6/Uformer, ``model.py``),
    so the released checkpoints load with ``strict=True``; given the same weights the output is the same. Only the
    released configuration is implemented: ``token_projection='linear'``, ``token_mlp='leff'`` and no
    ``cross_modulator``; other values raise NotImplementedError. The official forward needs a square input whose side
    is a multiple of 16 x the bottleneck window (128 for the released models); any other input is zero-padded,
    centred, to the smallest such square and the output is cropped back, as the official test scripts do
    (``expand2square``). Layer outputs are tokens (B, H*W, C) of that square, as in the official code.

    Args:
        img_size (int): Training patch size. It decides, as in the official code, which levels are too small for
            windows of ``win_size`` (they use their whole map as the window and do not shift). Default: 256.
        in_chans (int): Output channels. Default: 3.
        dd_in (int): Input channels; the input is added to the output only when it is 3. Default: 3.
        embed_dim (int): Channels at level 1; doubled at every level below. Default: 32.
        depths (list[int]): Blocks of the 4 encoder levels, the bottleneck and the 4 decoder levels.
            Default: (2, 2, 2, 2, 2, 2, 2, 2, 2).
        num_heads (list[int]): Attention heads of the same 9 layers. Default: (1, 2, 4, 8, 16, 16, 8, 4, 2).
        win_size (int): Window side. Default: 8.
        mlp_ratio (float): LeFF hidden channels per channel. Default: 4.
        qkv_bias (bool): Biases in the query/key/value projections. Default: True.
        qk_scale (float | None): Scale of the attention logits; None for head_dim ** -0.5. Default: None.
        drop_rate (float): Dropout after the input projection and the attention projections. Default: 0.
        attn_drop_rate (float): Dropout on the attention weights. Default: 0.
        drop_path_rate (float): Stochastic depth, rising linearly over the encoder to this value, constant in the
            bottleneck, mirrored in the decoder. Default: 0.1.
        norm_layer (type): Normalisation layer class of the blocks. Default: nn.LayerNorm.
        patch_norm (bool): Unused, as in the official code. Default: True.
        use_checkpoint (bool): Recompute the blocks in the backward pass to save memory. Default: False.
        token_projection (str): Only 'linear'. Default: 'linear'.
        token_mlp (str): Only 'leff'. Default: 'leff'.
        shift_flag (bool): Shift the windows of every second block. Default: True.
        modulator (bool): Learned modulators in the decoder blocks. Default: False.
        cross_modulator (bool): Only False. Default: False.

    Example (Uformer-B, 50.9M parameters)::

        network_g: {type: Uformer, img_size: 128, embed_dim: 32, depths: [1, 2, 8, 8, 2, 8, 8, 2, 1], modulator: true}
    """

    def __init__(self,
                 img_size=256,
                 in_chans=3,
                 dd_in=3,
                 embed_dim=32,
                 depths=(2, 2, 2, 2, 2, 2, 2, 2, 2),
                 num_heads=(1, 2, 4, 8, 16, 16, 8, 4, 2),
                 win_size=8,
                 mlp_ratio=4.,
                 qkv_bias=True,
                 qk_scale=None,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.1,
                 norm_layer=nn.LayerNorm,
                 patch_norm=True,
                 use_checkpoint=False,
                 token_projection='linear',
                 token_mlp='leff',
                 shift_flag=True,
                 modulator=False,
                 cross_modulator=False):
        super().__init__()
        for name, value, supported in (('token_projection', token_projection, 'linear'),
                                       ('token_mlp', token_mlp, 'leff'), ('cross_modulator', cross_modulator, False)):
            if value != supported:
                raise NotImplementedError(f'Uformer with {name}={value!r} is not implemented; only {supported!r} '
                                          '(the configuration of the released models) is.')
        self.dd_in = dd_in
        # the side of the padded input: every level's side must be a multiple of its window
        self.multiple = math.lcm(*(2**i * min(win_size, img_size // 2**i) for i in range(5)))

        enc_dpr = torch.linspace(0, drop_path_rate, sum(depths[:4])).tolist()
        dec_dpr = enc_dpr[::-1]
        enc_start = [sum(depths[:i]) for i in range(4)]
        dec_start = [sum(depths[5:5 + i]) for i in range(4)]

        def layer(i, level, dpr, modulated=False):
            dim = embed_dim * 2**level if i < 5 else embed_dim * 2**(level + 1)  # the decoder's concat doubles it
            resolution = img_size // 2**level
            return BasicUformerLayer(
                dim, (resolution, resolution),
                depths[i],
                num_heads[i],
                win_size,
                dpr,
                use_checkpoint=use_checkpoint,
                shift_flag=shift_flag,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                norm_layer=norm_layer,
                modulator=modulated)

        def encoder(level):
            return layer(level, level, enc_dpr[enc_start[level]:enc_start[level] + depths[level]])

        def decoder(j):
            return layer(5 + j, 3 - j, dec_dpr[dec_start[j]:dec_start[j] + depths[5 + j]], modulator)

        self.pos_drop = nn.Dropout(drop_rate)
        self.input_proj = InputProj(dd_in, embed_dim)
        self.output_proj = OutputProj(2 * embed_dim, in_chans)
        self.encoderlayer_0 = encoder(0)
        self.dowsample_0 = Downsample(embed_dim, embed_dim * 2)  # the official (misspelt) name
        self.encoderlayer_1 = encoder(1)
        self.dowsample_1 = Downsample(embed_dim * 2, embed_dim * 4)
        self.encoderlayer_2 = encoder(2)
        self.dowsample_2 = Downsample(embed_dim * 4, embed_dim * 8)
        self.encoderlayer_3 = encoder(3)
        self.dowsample_3 = Downsample(embed_dim * 8, embed_dim * 16)
        self.conv = layer(4, 4, [drop_path_rate] * depths[4])  # the bottleneck
        self.upsample_0 = Upsample(embed_dim * 16, embed_dim * 8)
        self.decoderlayer_0 = decoder(0)
        self.upsample_1 = Upsample(embed_dim * 16, embed_dim * 4)
        self.decoderlayer_1 = decoder(1)
        self.upsample_2 = Upsample(embed_dim * 8, embed_dim * 2)
        self.decoderlayer_2 = decoder(2)
        self.upsample_3 = Upsample(embed_dim * 4, embed_dim)
        self.decoderlayer_3 = decoder(3)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h, w = x.shape[-2:]
        side = -(-max(h, w) // self.multiple) * self.multiple
        top, left = (side - h) // 2, (side - w) // 2
        x = F.pad(x, (left, side - w - left, top, side - h - top))

        y = self.pos_drop(self.input_proj(x))
        skips = []
        for i in range(4):
            size = side >> i
            y = getattr(self, f'encoderlayer_{i}')(y, size, size)
            skips.append(y)
            y = getattr(self, f'dowsample_{i}')(y, size, size)
        y = self.conv(y, side >> 4, side >> 4)
        for j in range(4):
            size = side >> (3 - j)
            y = torch.cat([getattr(self, f'upsample_{j}')(y, size // 2, size // 2), skips.pop()], -1)
            y = getattr(self, f'decoderlayer_{j}')(y, size, size)
        y = self.output_proj(y, side, side)
        if self.dd_in == 3:
            y = x + y
        return y[:, :, top:top + h, left:left + w]
