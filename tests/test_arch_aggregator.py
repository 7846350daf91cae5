"""MTKD's knowledge aggregator: the window DCT, the shifted-window mask, shapes, translation consistency, gradients,
and the forward against a reference written out from the paper (explicit DCT matrices, window loops, attention)."""
import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

import kd_archs  # noqa: F401  (registers the plugin and applies the BasicSR compatibility fixes)
from basicsr.archs import build_network
from basicsr.archs.swinir_arch import SwinTransformerBlock
from kd_archs.kd_mtkd_aggregator_arch import DCTSwinLayer, dct_matrix, window_dct_matrices
from kd_archs.kd_swin_mask import shifted_window_mask

TINY = dict(
    type='KDMTKDAggregator',
    num_teachers=2,
    embed_dim=8,
    num_blocks=2,
    num_layers=2,
    window_size=4,
    num_heads=2,
    num_feat=8,
    drop_path_rate=0.)
NORMS = ['ortho', None]


def tiny(std=0.1, **overrides):
    torch.manual_seed(0)
    net = build_network({**TINY, **overrides})
    for param in net.parameters():  # larger than the init, so that every part of the network shows in the output
        nn.init.normal_(param, std=std)
    return net.eval()


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('window_size', [4, 8])
def test_window_dct_then_idct_is_the_identity(norm, window_size):
    dct, idct = window_dct_matrices(window_size, norm)
    tokens = torch.randn(6, window_size**2, 5)
    assert torch.allclose(idct @ (dct @ tokens), tokens, atol=1e-5)


@pytest.mark.parametrize('norm', NORMS)
def test_window_dct_equals_scipy_dctn(norm):
    window = np.random.default_rng(0).standard_normal((8, 8))
    expected = scipy.fft.dctn(window, type=2, norm=norm)  # scipy's norm=None is torch-dct's unnormalised DCT
    dct, _ = window_dct_matrices(8, norm)
    coefficients = dct.double() @ torch.from_numpy(window).flatten()
    np.testing.assert_allclose(coefficients.view(8, 8).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_orthonormal_dct_matrix_is_orthogonal():
    d, d_inv = dct_matrix(8, 'ortho')
    assert torch.allclose(d @ d.t(), torch.eye(8, dtype=d.dtype), atol=1e-12)
    assert torch.allclose(d_inv, d.t(), atol=1e-12)
    dct, idct = window_dct_matrices(8, 'ortho')
    assert torch.allclose(dct @ dct.t(), torch.eye(64), atol=1e-6)


@pytest.mark.parametrize('norm, dc_gain', [('ortho', 8.), (None, 256.)])  # ws * c; (2 ws)^2 * c
def test_dct_of_a_constant_window_has_only_a_dc_coefficient(norm, dc_gain):
    dct, _ = window_dct_matrices(8, norm)
    coefficients = dct @ torch.full((64, 1), 0.5)
    assert coefficients[0, 0].item() == pytest.approx(0.5 * dc_gain, rel=1e-6)
    assert coefficients[1:].abs().max() < 1e-5


def test_unknown_dct_norm_is_refused():
    with pytest.raises(ValueError, match='dct_norm'):
        build_network({**TINY, 'dct_norm': 'forward'})


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('size', [(27, 21), (16, 32), (5, 7)])
def test_output_has_the_input_size_at_every_scale(scale, size):
    net = tiny(scale=scale)
    outputs = [torch.rand(1, 3, *size), torch.rand(1, 3, *size)]
    with torch.no_grad():
        out = net(torch.cat(outputs, 1))
        assert out.shape == (1, 3, *size)
        assert torch.equal(net(outputs), out), 'a list of teacher outputs is concatenated in order'


def test_wrong_number_of_teacher_outputs_is_refused():
    with pytest.raises(ValueError, match='2 teachers'):
        tiny()(torch.rand(1, 9, 16, 16))


def circular_convs(net):
    """Make every conv wrap around, so that the whole network commutes with circular shifts of its input."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.padding_mode = 'circular'
    return net


@pytest.mark.parametrize('scale', [2, 3])
@pytest.mark.parametrize('norm', NORMS)
def test_without_shifted_windows_the_output_follows_a_circular_shift_by_whole_windows(scale, norm):
    # HR size a multiple of window_size * scale: no padding; circular convs: no image border. What remains are the
    # windowed DCT and attention, which commute with shifts by whole windows (window_size * scale pixels at HR).
    ws, size = TINY['window_size'], (4 * TINY['window_size'] * scale, 3 * TINY['window_size'] * scale)
    shift = (ws * scale, 2 * ws * scale)
    x = torch.rand(1, 6, *size)
    shifted_x = torch.roll(x, shift, dims=(2, 3))
    with torch.no_grad():
        net = circular_convs(tiny(scale=scale, dct_norm=norm, shifted_windows=False))
        out = net(x)
        assert torch.allclose(net(shifted_x), torch.roll(out, shift, dims=(2, 3)), atol=1e-5)
        assert not torch.allclose(
            net(torch.roll(x, (1, 0), dims=(2, 3))), torch.roll(out, (1, 0), dims=(2, 3)),
            atol=1e-3), 'a shift by less than a window must change the windows'
        # the shifted windows' mask depends on the position of the window, so the check can fail
        net = circular_convs(tiny(scale=scale, dct_norm=norm, shifted_windows=True))
        assert not torch.allclose(net(shifted_x), torch.roll(net(x), shift, dims=(2, 3)), atol=1e-3)


def independent_mask(h, w, window_size, shift_size):
    """Position (r, c) of the map rolled by -shift holds pixel ((r + shift) % h, (c + shift) % w) of the un-rolled
    map; two positions of one window may attend to each other iff those pixels are less than a window apart in
    both axes, i.e. no wrap-around lies between them (true when h and w are at least two windows)."""
    rows = (torch.arange(h) + shift_size) % h
    cols = (torch.arange(w) + shift_size) % w
    masks = []
    for top in range(0, h, window_size):
        for left in range(0, w, window_size):
            r = rows[top:top + window_size][:, None].expand(window_size, window_size).flatten()
            c = cols[left:left + window_size][None, :].expand(window_size, window_size).flatten()
            near = ((r[:, None] - r[None]).abs() < window_size) & ((c[:, None] - c[None]).abs() < window_size)
            masks.append(torch.where(near, 0., -100.))
    return torch.stack(masks)


@pytest.mark.parametrize('h, w, window_size', [(16, 24, 4), (16, 16, 8), (24, 16, 8)])
def test_shift_mask_equals_an_independent_construction_in_the_spatial_domain(h, w, window_size):
    mask = shifted_window_mask(h, w, window_size, window_size // 2)
    assert torch.equal(mask, independent_mask(h, w, window_size, window_size // 2))
    assert (mask[0] == 0).all() and (mask[-1] != 0).any()


def test_gradient_reaches_every_parameter():
    net = tiny(scale=2).train()
    out = net(torch.rand(2, 6, 22, 18))
    (out - torch.rand_like(out)).abs().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def expected_num_params(num_teachers, scale, embed_dim, num_blocks, num_layers, window_size, num_heads, mlp_ratio,
                        num_feat):
    """Parameter count of the aggregator with the 'pixelshuffle' upsampler, added up from its description."""
    c, hidden = embed_dim, int(embed_dim * mlp_ratio)
    conv = lambda c_in, c_out: 9 * c_in * c_out + c_out  # noqa: E731
    layer = (4 * c + (2 * window_size - 1)**2 * num_heads + (3 * c * c + 3 * c) + (c * c + c) + (c * hidden + hidden) +
             (hidden * c + c))
    upsample = conv(num_feat, 9 * num_feat) if scale == 3 else (scale // 2) * conv(num_feat, 4 * num_feat)
    return (conv(3 * num_teachers * scale**2, c) + 2 * c + num_blocks * (num_layers * layer + conv(c, c)) + 2 * c +
            conv(c, c) + conv(c, num_feat) + upsample + conv(num_feat, 3))


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_paper_preset_parameter_count(scale):
    net = build_network({'type': 'KDMTKDAggregator', 'scale': scale})  # C 24, B 4, L 2, W_s 8, 3 teachers
    assert sum(p.numel() for p in net.parameters()) == expected_num_params(3, scale, 24, 4, 2, 8, 6, 2, 64)


def test_authors_configuration_has_the_parameter_count_of_their_dctswin():
    # options/train/ECCVMTKD/train_DCTSwinx4_3mt.yml of YuxuanJJ/MTKD: embed_dim 96, depths [4, 4], heads 6;
    # their DCTSwin with these settings has 1,335,603 parameters (counted once with their code and torch-dct).
    net = build_network({'type': 'KDMTKDAggregator', 'scale': 4, 'embed_dim': 96, 'num_blocks': 2, 'num_layers': 4})
    assert sum(p.numel() for p in net.parameters()) == 1335603 == expected_num_params(3, 4, 96, 2, 4, 8, 6, 2, 64)
    keys = list(net.state_dict())
    assert keys[:3] == ['conv_first.weight', 'conv_first.bias', 'patch_embed.norm.weight']
    assert 'layers.1.residual_group.blocks.3.attn.relative_position_bias_table' in keys
    assert not any('attn_mask' in key for key in keys)


# ------------------------------------------------------------------------------- ablation v4: without DCT/IDCT
@pytest.mark.parametrize('shift_size', [0, 2])
def test_layer_without_dct_is_swinirs_swin_layer(shift_size):
    # the same weights in BasicSR's SwinTransformerBlock, which builds its own shifted-window mask
    torch.manual_seed(0)
    layer = DCTSwinLayer(8, 2, 4, shift_size, 2., 'ortho', use_dct=False, drop_path=0.).eval()
    for param in layer.parameters():
        nn.init.normal_(param, std=0.1)
    swin = SwinTransformerBlock(8, (8, 12), 2, window_size=4, shift_size=shift_size, mlp_ratio=2.).eval()
    missing, unexpected = swin.load_state_dict(layer.state_dict(), strict=False)
    assert set(missing) <= {'attn_mask'} and not unexpected
    x = torch.rand(2, 8 * 12, 8)
    mask = shifted_window_mask(8, 12, 4, shift_size) if shift_size else None
    with torch.no_grad():
        out = layer(x, (8, 12), mask)
        assert torch.allclose(out, swin(x, (8, 12)), atol=1e-6)
        layer_dct = DCTSwinLayer(8, 2, 4, shift_size, 2., 'ortho', use_dct=True, drop_path=0.).eval()
        layer_dct.load_state_dict(layer.state_dict())
        assert (layer_dct(x, (8, 12), mask) - out).abs().max() > 1e-2


@pytest.mark.parametrize('scale', [2, 3])
def test_aggregator_without_dct_runs_and_differs_from_the_dct_path_with_the_same_weights(scale):
    net_dct, net_v4 = tiny(scale=scale), tiny(scale=scale, use_dct=False)
    assert list(net_v4.state_dict()) == list(net_dct.state_dict())
    net_v4.load_state_dict(net_dct.state_dict())
    assert sum(p.numel() for p in net_v4.parameters()) == sum(p.numel() for p in net_dct.parameters())
    x = torch.rand(1, 6, 27, 21)
    with torch.no_grad():
        out = net_v4(x)
        assert out.shape == (1, 3, 27, 21) and torch.isfinite(out).all()
        assert (out - net_dct(x)).abs().max() > 1e-2


def test_paper_preset_without_dct_keeps_the_parameter_count():
    net = build_network({'type': 'KDMTKDAggregator', 'scale': 4, 'use_dct': False})
    assert sum(p.numel() for p in net.parameters()) == expected_num_params(3, 4, 24, 4, 2, 8, 6, 2, 64)


# ------------------------------------------------------------------------- a reference forward, written out
def layer_norm(x, norm):
    """LayerNorm over the last dim, written out (eps 1e-5, PyTorch's default)."""
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean)**2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + 1e-5) * norm.weight + norm.bias


def conv3x3(x, conv):
    return torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)


def unshuffle(x, s):
    """Pixel unshuffle by indexing: output channel c·s² + i·s + j holds x[c, i::s, j::s]."""
    return torch.stack([x[:, c, i::s, j::s] for c in range(x.shape[1]) for i in range(s) for j in range(s)], 1)


def shuffle(x, s):
    """Pixel shuffle by indexing: out[c, y·s + i, x·s + j] = x[c·s² + i·s + j, y, x]."""
    b, channels, h, w = x.shape
    out = x.new_zeros(b, channels // s**2, h * s, w * s)
    for c in range(channels // s**2):
        for i in range(s):
            for j in range(s):
                out[:, c, i::s, j::s] = x[:, c * s * s + i * s + j]
    return out


def window_attention(tokens, attn, window_size, mask):
    """Multi-head self-attention of one window's tokens (b, n, c), with Swin's relative position bias
    B[h, p, q] = table[(r_p − r_q + ws − 1)(2ws − 1) + c_p − c_q + ws − 1, h] of the row-major positions p, q."""
    b, n, c = tokens.shape
    heads = attn.num_heads
    dim = c // heads
    qkv = tokens @ attn.qkv.weight.t() + attn.qkv.bias
    positions = [(p // window_size, p % window_size) for p in range(n)]
    index = torch.tensor([[(rp - rq + window_size - 1) * (2 * window_size - 1) + cp - cq + window_size - 1
                           for rq, cq in positions] for rp, cp in positions])
    outputs = []
    for h in range(heads):
        q, k, v = (qkv[..., part * c + h * dim:part * c + (h + 1) * dim] for part in range(3))
        logits = q @ k.transpose(1, 2) / dim**0.5 + attn.relative_position_bias_table[index, h]
        if mask is not None:
            logits = logits + mask
        outputs.append(torch.softmax(logits, -1) @ v)
    return torch.cat(outputs, -1) @ attn.proj.weight.t() + attn.proj.bias


def dct_layer(x, layer, size, d, d_inv, mask):
    """One DCTSwin layer on (b, h·w, c) tokens: LayerNorm; roll by −shift; for each window (explicit loops) the 2-D
    DCT D X Dᵀ per channel, window attention on the coefficient tokens, the inverse D⁻¹ Y D⁻ᵀ; roll back; residual;
    LayerNorm, MLP (GELU), residual."""
    (h, w), (b, _, c), ws, shift = size, x.shape, layer.window_size, layer.shift_size
    y = layer_norm(x, layer.norm1).view(b, h, w, c)
    if shift:
        y = torch.roll(y, (-shift, -shift), dims=(1, 2))
    out = torch.zeros_like(y)
    for index, (top, left) in enumerate((top, left) for top in range(0, h, ws) for left in range(0, w, ws)):
        window = y[:, top:top + ws, left:left + ws]  # (b, ws, ws, c)
        coefficients = torch.einsum('kr,lc,brcd->bkld', d, d, window).reshape(b, ws * ws, c)
        attended = window_attention(coefficients, layer.attn, ws, mask[index] if shift else None).view(b, ws, ws, c)
        out[:, top:top + ws, left:left + ws] = torch.einsum('rk,cl,bkld->brcd', d_inv, d_inv, attended)
    if shift:
        out = torch.roll(out, (shift, shift), dims=(1, 2))
    x = x + out.reshape(b, h * w, c)
    hidden = torch.nn.functional.gelu(layer_norm(x, layer.norm2) @ layer.mlp.fc1.weight.t() + layer.mlp.fc1.bias)
    return x + hidden @ layer.mlp.fc2.weight.t() + layer.mlp.fc2.bias


def reference_forward(net, x, norm):
    """mtkd.txt Sec. 3.1 from the module's weights: PixelUnshuffle(s) and a 3x3 conv give F_s; LayerNorm, B DCTSwin
    blocks (L layers, a 3x3 conv, a residual), LayerNorm and a 3x3 conv give F_d; F_s + F_d goes through the
    sub-pixel upsampler (conv + LeakyReLU, conv + PixelShuffle stages, conv to RGB). ``x``: a size that needs no
    padding (a multiple of window_size · scale)."""
    s, ws = net.scale, net.window_size
    d = torch.from_numpy(scipy.fft.dct(np.eye(ws), type=2, norm=norm, axis=0))  # D @ v = DCT-II(v)
    d_inv = torch.from_numpy(scipy.fft.idct(np.eye(ws), type=2, norm=norm, axis=0))
    shallow = conv3x3(unshuffle(x, s), net.conv_first)  # F_s
    b, c, h, w = shallow.shape
    mask = independent_mask(h, w, ws, ws // 2).double()
    tokens = layer_norm(shallow.flatten(2).transpose(1, 2), net.patch_embed['norm'])
    for block in net.layers:
        y = tokens
        for layer in block.residual_group['blocks']:
            y = dct_layer(y, layer, (h, w), d, d_inv, mask)
        tokens = conv3x3(y.transpose(1, 2).reshape(b, c, h, w), block.conv).flatten(2).transpose(1, 2) + tokens
    deep = conv3x3(layer_norm(tokens, net.norm).transpose(1, 2).reshape(b, c, h, w), net.conv_after_body)  # F_d
    y = torch.nn.functional.leaky_relu(conv3x3(shallow + deep, net.conv_before_upsample[0]), 0.01)
    factor = 3 if s == 3 else 2
    for conv in [m for m in net.upsample if isinstance(m, nn.Conv2d)]:
        y = shuffle(conv3x3(y, conv), factor)
    return conv3x3(y, net.conv_last)


@pytest.mark.parametrize('scale', [2, 3])
@pytest.mark.parametrize('norm', NORMS)
def test_forward_equals_a_reference_written_from_the_paper(scale, norm):
    net = tiny(scale=scale, dct_norm=norm).double()
    assert net.shift_size == 2 and len(net.layers) == 2  # two blocks, the second layer of each shifted
    ws = TINY['window_size']
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, 2 * ws * scale, 3 * ws * scale, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        expected = reference_forward(net, x, norm)
        # 1e-9 apart: the module keeps its DCT matrices in float32 (its buffers), rounded before .double()
        assert torch.allclose(net(x), expected, rtol=0, atol=1e-7)
        assert expected.abs().max() > 0.1
