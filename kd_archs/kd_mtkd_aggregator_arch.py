"""MTKD's knowledge aggregation network: DCTSwin blocks fuse the SR outputs of N teachers (Jiang et al., ECCV 2024)."""
import torch
from torch import nn
from torch.nn import functional as F
from basicsr.archs.arch_util import Upsample, trunc_normal_
from basicsr.archs.swinir_arch import DropPath, Mlp, WindowAttention, window_partition, window_reverse
from basicsr.utils.registry import ARCH_REGISTRY

from .kd_swin_mask import shifted_window_mask


def dct_matrix(n, norm='ortho'):
    """The DCT-II of length ``n`` as a matrix D (``X = D @ x``) and its exact inverse, in float64.

    Args:
        n (int): Length of the transform.
        norm (str | None): 'ortho' for the orthonormal DCT (D^-1 = D^T); None for the unnormalised
            X_k = 2 sum_i x_i cos(pi k (2i + 1) / 2n), the default of torch-dct (the authors' code) and scipy.

    Returns:
        tuple[Tensor, Tensor]: D and D^-1, both (n, n).
    """
    if norm not in ('ortho', None):
        raise ValueError(f"dct_norm must be 'ortho' or None (unnormalised), got {norm!r}")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = 2 * torch.cos(torch.pi * k * (2 * i + 1) / (2 * n))
    if norm == 'ortho':
        d[0] /= (4 * n)**0.5
        d[1:] /= (2 * n)**0.5
    return d, torch.linalg.inv(d)


def window_dct_matrices(window_size, norm='ortho'):
    """2-D DCT-II of a window and its inverse, as (ws*ws, ws*ws) float32 matrices acting on the row-major tokens
    of the window: ``coefficients = dct @ tokens`` and ``tokens = idct @ coefficients``."""
    d, d_inv = dct_matrix(window_size, norm)
    return torch.kron(d, d).float(), torch.kron(d_inv, d_inv).float()


class DCTSwinLayer(nn.Module):
    """DCTSwin transformer layer (DCTSTL, mtkd.txt Sec. 3.1.2): LayerNorm, 2-D DCT-II of every window,
    (shifted-)window multi-head self-attention on the coefficient tokens, inverse DCT, residual; then LayerNorm,
    MLP and residual as in Swin. Without the DCT and IDCT it is a plain Swin transformer layer.

    Args:
        dim (int): Channels.
        num_heads (int): Attention heads.
        window_size (int): Side W_s of the square windows.
        shift_size (int): Cyclic shift of the windows; 0 for plain windows.
        mlp_ratio (float): Hidden width of the MLP over ``dim``.
        dct_norm (str | None): See :func:`dct_matrix`.
        use_dct (bool): Attend over the DCT coefficients of each window (False: over its spatial tokens).
        drop_path (float): Stochastic depth rate.
    """

    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio, dct_norm, use_dct, drop_path):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.use_dct = use_dct
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, (window_size, window_size), num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if use_dct:
            dct, idct = window_dct_matrices(window_size, dct_norm)
            self.register_buffer('dct', dct, persistent=False)
            self.register_buffer('idct', idct, persistent=False)

    def forward(self, x, x_size, mask):
        """x: (b, h*w, c) tokens; x_size: (h, w), multiples of the window size; mask: see shifted_window_mask."""
        (h, w), (b, _, c), ws, shift = x_size, x.shape, self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
        y = window_partition(y, ws).view(-1, ws * ws, c)
        if self.use_dct:
            y = self.dct @ y
        y = self.attn(y, mask=mask if shift else None)
        if self.use_dct:
            y = self.idct @ y
        y = window_reverse(y.view(-1, ws, ws, c), ws, h, w)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DCTSwinBlock(nn.Module):
    """DCTSwin block: L DCTSwin layers (shifted windows in every second one), a 3x3 conv and a residual.

    Args:
        dim (int): Channels.
        num_layers (int): DCTSwin layers L.
        shift_size (int): Shift of the odd layers' windows (0: no shifted windows).
        drop_path (list[float]): Stochastic depth rate of each layer.
        **layer_kwargs: num_heads, window_size, mlp_ratio, dct_norm and use_dct of :class:`DCTSwinLayer`.
    """

    def __init__(self, dim, num_layers, shift_size, drop_path, **layer_kwargs):
        super().__init__()
        layers = (
            DCTSwinLayer(dim, shift_size=shift_size if i % 2 else 0, drop_path=drop_path[i], **layer_kwargs)
            for i in range(num_layers))
        self.residual_group = nn.ModuleDict({'blocks': nn.ModuleList(layers)})  # keys of the authors' DCTSwin
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size, mask):
        y = x
        for layer in self.residual_group['blocks']:
            y = layer(y, x_size, mask)
        b, _, c = x.shape
        return self.conv(y.transpose(1, 2).reshape(b, c, *x_size)).flatten(2).transpose(1, 2) + x


@ARCH_REGISTRY.register()
class KDMTKDAggregator(nn.Module):
    """Knowledge aggregation network of MTKD (Jiang et al., MTKD: Multi-Teacher Knowledge Distillation for Image
    Super-Resolution, ECCV 2024, arXiv:2404.09571; mtkd.txt Sec. 3.1, Fig. 1).

    The SR outputs of N teachers, concatenated (3N channels at HR size), go through PixelUnshuffle(scale) and a
    3x3 conv (shallow features F_s, C channels), B DCTSwin blocks and a 3x3 conv (F_d), the residual F_s + F_d and
    a sub-pixel upsampler back to 3 channels at HR size. As in SwinIR and the authors' code, a LayerNorm follows
    the shallow conv and another precedes the body's last conv. Inputs of any size are reflect-padded to a
    multiple of ``window_size * scale`` and the output is cropped back. The order of the teachers is part of the
    trained network: keep it.

    Differences from the authors' ``DCTSwin`` (YuxuanJJ/MTKD), whose state_dict keys this class shares for the
    same configuration except their ``attn_mask`` buffers: the shifted-window mask is built in the spatial domain
    and unshifted layers have none (theirs takes the DCT of the region map, which also masks the DC coefficient
    from all others in unshifted layers whenever the input size differs from ``img_size``); the DCT is
    orthonormal by default (theirs: ``dct_norm: ~``); no DIV2K mean is subtracted (theirs does so, without
    adding it back, only for a single teacher).

    Args:
        num_teachers (int): Teachers N; the input has 3N channels. Default: 3.
        scale (int): SR scale of the teachers (2, 3 or 4). Default: 4.
        embed_dim (int): Channels C. Paper: 24; the authors' config: 96. Default: 24.
        num_blocks (int): DCTSwin blocks B. Paper: 4; the authors' config: 2. Default: 4.
        num_layers (int): DCTSwin layers L per block. Paper: 2; the authors' config: 4. Default: 2.
        window_size (int): Window side W_s of the DCT and the attention. Default: 8.
        num_heads (int): Attention heads (the authors' config: 6). Default: 6.
        mlp_ratio (float): MLP hidden width over C (the authors' config: 2). Default: 2.
        dct_norm (str | None): 'ortho' (orthonormal DCT-II) or None (unnormalised, as torch-dct's default in the
            authors' code); either is exactly inverted by its IDCT. Ignored without ``use_dct``. Default: 'ortho'.
        use_dct (bool): DCT/IDCT around the window attention. False is ablation v4 of mtkd.txt Tab. 5 ("removing
            the DCT and IDCT modules"): plain Swin layers attending over the spatial tokens, with the same
            parameters and state_dict keys. Default: True.
        shifted_windows (bool): Shift the windows of every second layer by half a window. Default: True.
        upsampler (str): 'pixelshuffle' (conv to ``num_feat`` + LeakyReLU, conv + PixelShuffle stages, conv to 3
            channels; the authors' config) or 'pixelshuffledirect' (one conv + PixelShuffle(scale)).
            Default: 'pixelshuffle'.
        num_feat (int): Channels of the 'pixelshuffle' upsampler. Default: 64.
        drop_path_rate (float): Stochastic depth, rising linearly over the layers to this rate (SwinIR's and
            the authors' default). Default: 0.1.

    Example (paper configuration, three x4 teachers)::

        network_agg:
          type: KDMTKDAggregator
          num_teachers: 3    # EDSR, RCAN, SwinIR outputs, in this order
          scale: 4
          embed_dim: 24      # C (mtkd.txt Sec. 4.2); the authors' released config uses 96
          num_blocks: 4      # B
          num_layers: 2      # L
          window_size: 8     # W_s
          dct_norm: ortho    # ~ reproduces the authors' unnormalised DCT
          use_dct: true      # false: ablation v4 of Tab. 5, plain Swin layers
    """

    def __init__(self,
                 num_teachers=3,
                 scale=4,
                 embed_dim=24,
                 num_blocks=4,
                 num_layers=2,
                 window_size=8,
                 num_heads=6,
                 mlp_ratio=2.,
                 dct_norm='ortho',
                 use_dct=True,
                 shifted_windows=True,
                 upsampler='pixelshuffle',
                 num_feat=64,
                 drop_path_rate=0.1):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} must be a multiple of num_heads {num_heads}')
        self.in_channels = 3 * num_teachers
        self.scale = scale
        self.window_size = window_size
        self.shift_size = window_size // 2 if shifted_windows and num_layers > 1 else 0
        self.upsampler = upsampler

        self.conv_first = nn.Conv2d(self.in_channels * scale**2, embed_dim, 3, 1, 1)
        self.patch_embed = nn.ModuleDict({'norm': nn.LayerNorm(embed_dim)})  # key of the authors' DCTSwin
        drop_path = torch.linspace(0, drop_path_rate, num_blocks * num_layers).tolist()
        self.layers = nn.ModuleList(
            DCTSwinBlock(
                embed_dim,
                num_layers,
                self.shift_size,
                drop_path[i * num_layers:(i + 1) * num_layers],
                num_heads=num_heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                dct_norm=dct_norm,
                use_dct=use_dct) for i in range(num_blocks))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        if upsampler == 'pixelshuffle':
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(scale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        elif upsampler == 'pixelshuffledirect':
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, 3 * scale**2, 3, 1, 1), nn.PixelShuffle(scale))
        else:
            raise ValueError(f"upsampler must be 'pixelshuffle' or 'pixelshuffledirect', got {upsampler!r}")
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        """Fuse the teachers' outputs.

        Args:
            x (Tensor | list[Tensor]): The N teacher outputs, (b, 3N, H, W) or a list of N (b, 3, H, W) tensors
                in the training order.

        Returns:
            Tensor: (b, 3, H, W).
        """
        if isinstance(x, (list, tuple)):
            x = torch.cat(x, dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f'KDMTKDAggregator expects the outputs of {self.in_channels // 3} teachers '
                             f'concatenated ({self.in_channels} channels), got {x.shape[1]} channels')
        h, w = x.shape[-2:]
        multiple = self.window_size * self.scale
        pad_h, pad_w = -h % multiple, -w % multiple
        x = F.pad(x, (0, pad_w, 0, pad_h), 'reflect' if pad_h < h and pad_w < w else 'replicate')

        x = self.conv_first(F.pixel_unshuffle(x, self.scale))
        b, c, lh, lw = x.shape
        mask = shifted_window_mask(lh, lw, self.window_size, self.shift_size).to(x) if self.shift_size else None
        tokens = self.patch_embed['norm'](x.flatten(2).transpose(1, 2))
        for block in self.layers:
            tokens = block(tokens, (lh, lw), mask)
        x = self.conv_after_body(self.norm(tokens).transpose(1, 2).reshape(b, c, lh, lw)) + x
        if self.upsampler == 'pixelshuffle':
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return x[..., :h, :w]
