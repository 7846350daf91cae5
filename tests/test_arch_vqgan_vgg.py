"""Frozen feature encoders: the VQGAN encoder (DCKD) against its spec, and VGG-19 (SKD) against torchvision."""
import json
import os

import pytest
import torch
import torchvision

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network

from conftest import ARCH_SPECS
from datasets_prep.convert_checkpoint import convert

SPEC = os.path.join(ARCH_SPECS, 'vqgan_encoder_f16_1024.json')
TINY_DDCONFIG = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=16, z_channels=8)


@pytest.fixture(scope='module')
def spec():
    with open(SPEC) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def vqgan():
    torch.manual_seed(0)
    return build_network({'type': 'KDVQGANEncoder'}).eval()  # vqgan_imagenet_f16_1024, full size


def test_vqgan_has_the_spec_keys_shapes_and_parameter_count_and_loads_them_strictly(spec, vqgan):
    assert {key: list(value.shape) for key, value in vqgan.state_dict().items()} == spec['state_dict']
    assert sum(param.numel() for param in vqgan.parameters()) == spec['num_params'] == 29626112
    generator = torch.Generator().manual_seed(0)
    checkpoint = {key: torch.randn(shape, generator=generator) for key, shape in spec['state_dict'].items()}
    fresh = build_network({'type': 'KDVQGANEncoder'})
    fresh.load_state_dict(checkpoint, strict=True)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in checkpoint.items())


def test_vqgan_taps_have_the_spec_shapes(spec, vqgan):
    with torch.no_grad():
        z, taps = vqgan(torch.rand(1, 3, 64, 64), return_taps=True)
    expected = spec['features_after_first_resblock_per_level']
    assert vqgan.tap_names == [f'encoder.down.{level}.block.0' for level in range(5)]
    assert [list(tap.shape) for tap in taps] == [expected[name] for name in vqgan.tap_names]
    assert list(z.shape) == spec['quant_conv_out'] == [1, 256, 4, 4]


def test_vqgan_taps_are_the_outputs_of_the_named_modules(vqgan):
    hooked = []
    handles = [
        vqgan.get_submodule(name).register_forward_hook(lambda m, i, o: hooked.append(o)) for name in vqgan.tap_names
    ]
    with torch.no_grad():
        z, taps = vqgan(torch.rand(1, 3, 32, 48), return_taps=True)
    for handle in handles:
        handle.remove()
    assert len(hooked) == 5 and all(torch.equal(a, b) for a, b in zip(hooked, taps))


def tiny_vqgan(**kwargs):
    torch.manual_seed(0)
    return build_network({
        'type': 'KDVQGANEncoder',
        'embed_dim': 5,
        'n_embed': 7,
        'ddconfig': TINY_DDCONFIG,
        **kwargs
    }).eval()


def test_code_distances_equal_the_direct_squared_distances():
    net = tiny_vqgan()
    codes = net.quantize.embedding.weight
    z = torch.randn(2, 5, 3, 4)
    direct = ((z.permute(0, 2, 3, 1).reshape(2, 12, 1, 5) - codes.view(1, 1, 7, 5))**2).sum(-1)
    distances = net.code_distances(z)
    assert distances.shape == (2, 12, 7)
    assert torch.allclose(distances, direct, atol=1e-5)
    with torch.no_grad():
        z = net(torch.rand(2, 3, 16, 24))  # two levels: one downsampling, z is 8x12
    assert net.code_distances(z).shape == (2, 96, 7)


def test_input_range_maps_zero_one_images_to_minus_one_one():
    scaled, unchanged = tiny_vqgan(), tiny_vqgan(input_range='[0,1]')
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(scaled(x), unchanged(x * 2 - 1), atol=1e-6)
        assert not torch.allclose(scaled(x), unchanged(x), atol=1e-3)
    with pytest.raises(ValueError, match='input_range'):
        tiny_vqgan(input_range='0-255')


@pytest.fixture(scope='module')
def torchvision_vgg19():
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).eval()


def test_vgg_keys_equal_torchvision_vgg19_features(torchvision_vgg19):
    reference = torchvision_vgg19.state_dict()
    expected = {key: value.shape for key, value in reference.items() if key.startswith('features.')}
    net = build_network({'type': 'KDVGG19Features'})
    assert {key: value.shape for key, value in net.state_dict().items()} == expected


def test_vgg_converted_from_a_torchvision_file_computes_its_features(tmp_path, torchvision_vgg19):
    reference = torchvision_vgg19
    state = {f'features.{key}': value for key, value in reference.features.state_dict().items()}
    state['classifier.6.bias'] = reference.classifier[6].bias  # the 0.5 GB classifier is dropped: leave most out
    torch.save(state, tmp_path / 'vgg19-dcbb9e9d.pth')
    report = convert('vgg19', str(tmp_path / 'vgg19-dcbb9e9d.pth'), str(tmp_path / 'vgg19_features.pth'),
                     {'type': 'KDVGG19Features'})
    assert any('dropped 1 (classifier: 1)' in line for line in report)
    converted = torch.load(tmp_path / 'vgg19_features.pth', weights_only=True)
    net = build_network({'type': 'KDVGG19Features', 'layer_names': ['relu1_1', 'relu2_1']}).eval()
    net.load_state_dict(converted['params'], strict=True)
    x = torch.rand(2, 3, 20, 28)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = reference.features[:7]((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))  # up to relu2_1
        out = net(x)
    assert list(out) == ['relu1_1', 'relu2_1']
    assert torch.allclose(out['relu2_1'], expected, atol=1e-5)


def test_vgg_layer_output_shapes_and_input_range():
    torch.manual_seed(0)
    net = build_network({'type': 'KDVGG19Features'}).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        out = net(x)
        shapes = {name: tuple(feature.shape[1:]) for name, feature in out.items()}
        assert shapes == {
            'relu1_1': (64, 32, 48),
            'relu2_1': (128, 16, 24),
            'relu3_1': (256, 8, 12),
            'relu4_1': (512, 4, 6),
            'relu5_1': (512, 2, 3)
        }
        net.input_range = '[-1,1]'
        assert torch.allclose(net(x * 2 - 1)['relu3_1'], out['relu3_1'], atol=1e-5)
    with pytest.raises(ValueError, match='relu9_1'):
        build_network({'type': 'KDVGG19Features', 'layer_names': ['relu9_1']})


def test_norm_groups_sets_every_group_norm_and_unknown_ddconfig_keys_are_refused():
    for groups in (32, 8):
        net = build_network({'type': 'KDVQGANEncoder', 'ddconfig': {'ch': 32 if groups == 32 else 16,
                                                                    'num_res_blocks': 1, 'norm_groups': groups}})
        norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert len(norms) == 5 * 2 + 1 + 2 * 2 + 1 + 1  # level blocks, level-4 attention, mid, norm_out
        assert {m.num_groups for m in norms} == {groups}
    with pytest.raises(ValueError, match=r"unknown keys \['norm_group'\]"):
        build_network({'type': 'KDVQGANEncoder', 'ddconfig': {'norm_group': 8}})
