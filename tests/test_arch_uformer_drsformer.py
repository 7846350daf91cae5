"""Uformer and DRSformer: the official key maps and parameter counts of every preset, and forwards at odd sizes."""
import pytest
import torch
from torch.nn import functional as F

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from conftest import check_official_spec
from kd_archs.kd_drsformer_arch import Attention
from kd_archs.kd_uformer_arch import DropPath

SPECS = ['uformer_teacher', 'uformer_student', 'drsformer_teacher', 'drsformer_student']
TINY = {
    # img_size 64 with windows of 4: every level down to the bottleneck (4 x 4) has whole windows, so the decoder's
    # modulators fit; depth 2 gives each layer a shifted block
    'Uformer': dict(img_size=64, embed_dim=4, depths=[1, 2, 1, 1, 2, 1, 1, 2, 1], win_size=4, modulator=True),
    'DRSformer': dict(dim=8, num_blocks=[1, 1, 1, 1]),
}


def tiny(arch, **overrides):
    torch.manual_seed(0)
    net = build_network({'type': arch, **TINY[arch], **overrides})
    for param in net.parameters():  # away from the initial values, which leave biases at 0 and gates equal
        torch.nn.init.normal_(param, std=0.1)
    return net.eval()


@pytest.mark.parametrize('name', SPECS)
def test_preset_has_the_official_keys_shapes_and_parameter_count_and_loads_them_strictly(name):
    check_official_spec(name)


@pytest.mark.parametrize('arch', ['Uformer', 'DRSformer'])
@pytest.mark.parametrize('size', [(37, 29), (64, 48), (3, 5)])
def test_forward_keeps_the_input_size(arch, size):
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert tiny(arch)(x).shape == x.shape


def test_uformer_pads_odd_inputs_to_a_centred_square_as_the_official_test_scripts_do():
    net = tiny('Uformer')
    x = torch.rand(1, 3, 37, 29)
    padded = F.pad(x, (17, 18, 13, 14))  # expand2square to 64 (16 x the bottleneck window of 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[:, :, 13:50, 17:46], rtol=0, atol=1e-5)


def test_drsformer_reflect_pads_odd_inputs_as_the_official_test_script_does():
    net = tiny('DRSformer')
    x = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(F.pad(x, (0, 3, 0, 3), mode='reflect'))[:, :, :37, :29], rtol=0, atol=0)


def test_top_k_sparse_attention_matches_a_direct_computation():
    torch.manual_seed(0)
    attention = Attention(dim=20, num_heads=2, bias=False)
    for name in ('attn1', 'attn2', 'attn3', 'attn4', 'temperature'):
        torch.nn.init.uniform_(getattr(attention, name), 0.5, 2)
    x = torch.randn(2, 20, 5, 7)

    q, k, v = (t.reshape(2, 2, 10, 35) for t in attention.qkv_dwconv(attention.qkv(x)).chunk(3, dim=1))
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * attention.temperature
    expected = 0
    for keep, weight in zip((5, 6, 7, 8), (attention.attn1, attention.attn2, attention.attn3, attention.attn4)):
        threshold = logits.sort(dim=-1, descending=True).values[..., keep - 1:keep]
        sparse = torch.where(logits >= threshold, logits, torch.tensor(float('-inf')))
        expected = expected + sparse.softmax(dim=-1) @ v * weight
    expected = attention.project_out(expected.reshape(2, 20, 5, 7))
    torch.testing.assert_close(attention(x), expected)


def test_uformer_gradient_checkpointing_and_drop_path_in_training():
    x = torch.rand(1, 3, 20, 24)
    grads = []
    for use_checkpoint in (False, True):
        net = tiny('Uformer', drop_path_rate=0., use_checkpoint=use_checkpoint).train()
        net(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])

    drop = DropPath(0.5).train()
    out = drop(torch.ones(2000, 3, 4))
    assert set(out.unique().tolist()) == {0., 2.} and (out == out[:, :1, :1]).all()
    assert abs(out.mean().item() - 1) < 0.1
    assert torch.equal(drop.eval()(out), out)


def test_uformer_rejects_configurations_it_does_not_implement():
    with pytest.raises(NotImplementedError, match="token_projection='conv'"):
        tiny('Uformer', token_projection='conv')
    with pytest.raises(NotImplementedError, match='cross_modulator'):
        tiny('Uformer', cross_modulator=True)
    with pytest.raises(ValueError, match='modulator'):  # decoder level 1/8 of 16 is 2 x 2, smaller than windows of 4
        tiny('Uformer', img_size=16)
    no_residual = tiny('Uformer', dd_in=1, modulator=False)
    assert no_residual(torch.rand(1, 1, 9, 9)).shape == (1, 3, 9, 9)
