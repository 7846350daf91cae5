"""NAFNet and Restormer: the official key maps and parameter counts of every preset, and forwards at odd sizes."""
import pytest
import torch
from torch.nn import functional as F

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from conftest import check_official_spec
from kd_archs.kd_nafnet_arch import LocalAvgPool2d

SPECS = [
    'nafnet_teacher', 'nafnet_student', 'restormer_teacher', 'restormer_student_dckd', 'restormer_student_slkd',
    'restormer_student_skd'
]
TINY = {
    'NAFNet': dict(width=4, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 2], dec_blk_nums=[1, 1, 1, 1]),
    'Restormer': dict(dim=8, num_blocks=[1, 1, 1, 2], num_refinement_blocks=1),
}
TINY['NAFNetLocal'] = TINY['NAFNet']


def tiny(arch, std=0.1, **overrides):
    torch.manual_seed(0)
    net = build_network({'type': arch, **TINY[arch], **overrides})
    for param in net.parameters():  # NAFNet's beta/gamma start at 0, which would hide its branches
        torch.nn.init.normal_(param, std=std)
    return net.eval()


@pytest.mark.parametrize('name', SPECS)
def test_preset_has_the_official_keys_shapes_and_parameter_count_and_loads_them_strictly(name):
    check_official_spec(name)


@pytest.mark.parametrize('arch', ['NAFNet', 'NAFNetLocal', 'Restormer'])
@pytest.mark.parametrize('size', [(37, 29), (64, 48), (3, 5)])
def test_forward_keeps_the_input_size(arch, size):
    overrides = {'train_size': (1, 3, 16, 16)} if arch == 'NAFNetLocal' else {}
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert tiny(arch, **overrides)(x).shape == x.shape


@pytest.mark.parametrize('arch, mode, multiple', [('NAFNet', 'constant', 16), ('Restormer', 'reflect', 8)])
def test_odd_inputs_are_padded_as_the_official_code_and_test_scripts_do(arch, mode, multiple):
    net = tiny(arch)
    x = torch.rand(1, 3, 37, 29)
    padded = F.pad(x, (0, -29 % multiple, 0, -37 % multiple), mode=mode)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[:, :, :37, :29], rtol=0, atol=1e-5)


def test_restormer_variants_build_and_run():
    x = torch.rand(1, 6, 16, 16)
    with torch.no_grad():
        out = tiny('Restormer', inp_channels=6, dual_pixel_task=True)(x)
        assert out.shape == (1, 3, 16, 16)
        bias_free = tiny('Restormer', LayerNorm_type='BiasFree', bias=True)
        assert bias_free(x[:, :3]).shape == (1, 3, 16, 16)
    assert not any(key.endswith('norm1.body.bias') for key in bias_free.state_dict())
    assert 'skip_conv.weight' not in tiny('Restormer').state_dict()


def test_local_average_pool_is_a_sliding_mean_with_replicated_borders():
    x = torch.rand(2, 3, 9, 7)
    expected = F.pad(F.avg_pool2d(x, (4, 3), stride=1), (1, 1, 1, 2), mode='replicate')
    torch.testing.assert_close(LocalAvgPool2d((4, 3))(x), expected)
    torch.testing.assert_close(LocalAvgPool2d((9, 8))(x), x.mean((2, 3), keepdim=True))


def test_nafnet_local_is_nafnet_on_training_size_inputs_and_local_on_larger_ones():
    local = tiny('NAFNetLocal', std=0.2, train_size=(1, 3, 32, 32))
    plain = tiny('NAFNet')
    plain.load_state_dict(local.state_dict(), strict=True)
    first_pool = local.encoders[0][0].sca[0]
    assert first_pool.kernel_size == (48, 48) and local.middle_blks[0].sca[0].kernel_size == (3, 3)
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(local(x), plain(x))
        x = torch.linspace(-5, 5, 80).expand(1, 3, 96, 80)  # a ramp: local means differ from the global one
        assert (local(x) - plain(x)).abs().max() > 1e-3


def test_nafnet_local_takes_the_official_fast_imp_argument():
    assert tiny('NAFNetLocal', train_size=(1, 3, 32, 32), fast_imp=False).encoders[0][0].sca[0].kernel_size == (48, 48)
    with pytest.raises(ValueError, match='fast_imp: true .* is not provided'):
        tiny('NAFNetLocal', fast_imp=True)
