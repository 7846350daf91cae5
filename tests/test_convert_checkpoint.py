"""datasets_prep/convert_checkpoint.py: synthetic checkpoints in the official layouts round-trip into our networks;
files it does not recognise are refused; a Lightning-style VQGAN checkpoint is read without its classes."""
import importlib.util
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from datasets_prep.convert_checkpoint import ConversionError, convert, main

RGB = dict(num_in_ch=3, num_out_ch=3)
TINY_VQGAN = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=16, z_channels=8)
TINY = {
    'rcan': dict(type='RCAN', **RGB, num_feat=16, num_group=2, num_block=3, squeeze_factor=4, upscale=4),
    'edsr': dict(type='EDSR', **RGB, num_feat=8, num_block=3, upscale=3, res_scale=0.1),
    'restormer': dict(type='Restormer', dim=8, num_blocks=[1, 1, 1, 2], num_refinement_blocks=1),
    'uformer': dict(type='Uformer', img_size=32, embed_dim=4, depths=[1, 1, 1, 1, 1, 1, 1, 1, 1], win_size=4),
    'nafnet': dict(type='NAFNet', width=4, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'drsformer': dict(type='DRSformer', dim=8, num_blocks=[1, 1, 1, 1]),
    'swinir': dict(type='SwinIR', upscale=1, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2]),
    'vqgan': dict(type='KDVQGANEncoder', embed_dim=5, n_embed=7, ddconfig=TINY_VQGAN),
}
DIV2K_MEAN = torch.tensor([0.4488, 0.4371, 0.4040])


def official_rcan_key(key, num_group=2, num_block=3):
    """BasicSR RCAN key -> the key of the official RCAN (RCAN_TrainCode/code/model/rcan.py): head, body of residual
    groups (each: RCABs, then a conv at index num_block), the trunk's conv at index num_group, tail."""
    part = key.split('.')
    if part[0] in ('conv_first', 'conv_after_body', 'conv_last'):
        return {'conv_first': 'head.0', 'conv_after_body': f'body.{num_group}', 'conv_last': 'tail.1'}[part[0]] + \
            '.' + part[-1]
    if part[0] == 'upsample':  # Upsampler = nn.Sequential(conv, PixelShuffle, conv, PixelShuffle)
        return f'tail.0.{part[1]}.{part[2]}'
    if part[2] == 'conv':
        return f'body.{part[1]}.body.{num_block}.{part[3]}'
    rcab = f'body.{part[1]}.body.{part[3]}.body'  # body.<g>.residual_group.<b>.rcab.<i>[.attention.<j>].<param>
    if part[5] == '3':  # CALayer.conv_du = (conv, ReLU, conv, Sigmoid); ChannelAttention has the pooling first
        return f'{rcab}.3.conv_du.{int(part[7]) - 1}.{part[8]}'
    return f'{rcab}.{part[5]}.{part[6]}'


def official_edsr_key(key, num_block=3):
    """BasicSR EDSR key -> the key of EDSR-PyTorch's EDSR (src/model/edsr.py): ResBlock.body = (conv, ReLU, conv)."""
    part = key.split('.')
    if part[0] == 'body':
        index = {'conv1': 0, 'conv2': 2}[part[2]]
        return f'body.{part[1]}.body.{index}.{part[3]}'
    return official_rcan_key(key, num_group=num_block)


def mean_shift(rgb_range=255., mean=DIV2K_MEAN):
    """The official sub_mean/add_mean 1x1 convs (MeanShift, rgb_std 1)."""
    eye = torch.eye(3).view(3, 3, 1, 1)
    return {
        'sub_mean.weight': eye,
        'sub_mean.bias': -rgb_range * mean,
        'add_mean.weight': eye,
        'add_mean.bias': rgb_range * mean
    }


def random_state(source, seed=0):
    torch.manual_seed(seed)
    net = build_network(TINY[source])
    for param in net.parameters():
        torch.nn.init.normal_(param)
    return net.state_dict()


def converted(path):
    checkpoint = torch.load(path, weights_only=True)
    assert list(checkpoint) == ['params']
    return checkpoint['params']


@pytest.mark.parametrize('source, official_key', [('rcan', official_rcan_key), ('edsr', official_edsr_key)])
def test_official_sr_checkpoint_round_trips_into_basicsr_keys(tmp_path, source, official_key):
    state = random_state(source)
    official = {official_key(key): value for key, value in state.items()}
    assert len(official) == len(state)
    official.update(mean_shift())
    # the releases are bare state dicts, saved by PyTorch 0.4 in the legacy (pre-zip) format
    torch.save(official, tmp_path / 'official.pt', _use_new_zipfile_serialization=False)

    report = convert(source, str(tmp_path / 'official.pt'), str(tmp_path / 'out' / 'net.pth'), TINY[source])
    result = converted(tmp_path / 'out' / 'net.pth')
    assert list(result) == list(state)  # BasicSR's key order
    assert all(torch.equal(result[key], state[key]) for key in state)
    assert 'sub_mean/add_mean' in '\n'.join(report) and 'loads strictly' in report[-1]


def uformer_file(state):
    """Uformer's training script saves the epoch, the state dict of a DataParallel model and the optimizer."""
    return {'epoch': 250, 'state_dict': {f'module.{k}': v for k, v in state.items()}, 'optimizer': {'state': {}}}


OFFICIAL_FILES = {  # how each source's release holds its state dict
    'nafnet': lambda state: {'params': state},
    'restormer': lambda state: {'params': {k: v + 1 for k, v in state.items()}, 'params_ema': state},
    'uformer': uformer_file,
    'drsformer': lambda state: state,
    'swinir': lambda state: {'model': state},
}


@pytest.mark.parametrize('source', list(OFFICIAL_FILES))
def test_official_restoration_checkpoints_under_any_top_level_key(tmp_path, source):
    state = random_state(source)
    torch.save(OFFICIAL_FILES[source](state), tmp_path / 'official.pth')
    report = convert(source, str(tmp_path / 'official.pth'), str(tmp_path / 'net.pth'), TINY[source])
    result = converted(tmp_path / 'net.pth')
    assert list(result) == list(state) and all(torch.equal(result[key], state[key]) for key in state)
    assert ('"module." prefix' in report[1]) == (source == 'uformer')


def test_files_that_are_not_official_checkpoints_are_refused(tmp_path):
    rcan = random_state('rcan')
    cases = {
        'basicsr_layout.pth': (rcan, 'rcan', "not an official RCAN checkpoint (it looks like BasicSR's layout"),
        'no_tensors.pth': ({
            'epoch': 3,
            'note': 'hello'
        }, 'rcan', "is not recognised: no state dict"),
        'other_mean.pt': ({
            **{
                official_rcan_key(k): v
                for k, v in rcan.items()
            },
            **mean_shift(mean=torch.ones(3) / 2)
        }, 'rcan', 'give --arch the rgb_mean [0.5, 0.5, 0.5]'),
        'no_mean_shift.pt': ({
            official_rcan_key(k): v
            for k, v in rcan.items()
        }, 'rcan', 'no sub_mean.weight'),
        'drsformer.pth': ({
            'params': random_state('drsformer')
        }, 'restormer', 'does not fit Restormer'),
        'restormer_wider.pth': ({
            'params': build_network(dict(TINY['restormer'], dim=16)).state_dict()
        }, 'restormer', 'size mismatch'),
    }
    for name, (content, source, words) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ConversionError) as error:
            convert(source, str(tmp_path / name), str(tmp_path / 'out.pth'), TINY[source])
        assert words in str(error.value) and name in str(error.value), str(error.value)
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    with pytest.raises(ConversionError, match='notes.txt is not a PyTorch checkpoint'):
        convert('nafnet', str(tmp_path / 'notes.txt'), str(tmp_path / 'out.pth'), TINY['nafnet'])
    with pytest.raises(ConversionError, match='the target network is EDSR, but rcan checkpoints are for RCAN'):
        convert('rcan', str(tmp_path / 'basicsr_layout.pth'), str(tmp_path / 'out.pth'), TINY['edsr'])
    assert not (tmp_path / 'out.pth').exists()


def test_command_line_names_the_source_and_the_problem(tmp_path, capsys):
    torch.save({'epoch': 3}, tmp_path / 'x.pth')
    with pytest.raises(SystemExit) as error:
        main(['restormer', str(tmp_path / 'x.pth'), str(tmp_path / 'y.pth'), '--preset', 'restormer_teacher'])
    message = str(error.value)
    assert message.startswith('convert_checkpoint restormer: ') and 'x.pth is not recognised' in message
    with pytest.raises(SystemExit):  # RCAN needs the target network: its scale is not in the file name
        main(['rcan', str(tmp_path / 'x.pth'), str(tmp_path / 'y.pth')])
    assert '--preset NAME' in capsys.readouterr().err

    state = random_state('nafnet')
    torch.save({'params': state}, tmp_path / 'nafnet.pth')
    main(['nafnet', str(tmp_path / 'nafnet.pth'), str(tmp_path / 'out.pth'), '--arch', str(TINY['nafnet'])])
    assert 'loads strictly into NAFNet' in capsys.readouterr().out
    assert all(torch.equal(converted(tmp_path / 'out.pth')[key], state[key]) for key in state)


LIGHTNING_MODULES = ('pytorch_lightning', 'pytorch_lightning.callbacks', 'pytorch_lightning.callbacks.model_checkpoint')


def lightning_checkpoint(path, state):
    """A file laid out like taming's last.ckpt, whose pickle names a class of pytorch_lightning (made up here and
    gone again before the conversion, as on a machine without Lightning)."""
    checkpoint_class = type('ModelCheckpoint', (), {'__module__': LIGHTNING_MODULES[-1]})
    modules = {name: types.ModuleType(name) for name in LIGHTNING_MODULES}
    modules[LIGHTNING_MODULES[-1]].ModelCheckpoint = checkpoint_class
    callback = checkpoint_class()
    callback.best_model_path, callback.monitor = 'logs/ckpts/epoch=3.ckpt', 'val/rec_loss'
    sys.modules.update(modules)
    try:
        torch.save(
            {
                'epoch': 3,
                'global_step': 1000,
                'pytorch-lightning_version': '1.0.8',
                'state_dict': state,
                'callbacks': {
                    checkpoint_class: {
                        'best_model_score': torch.tensor(0.1),
                        'instance': callback
                    }
                },
                'optimizer_states': [{
                    'state': {},
                    'param_groups': [{
                        'lr': 4.5e-6,
                        'betas': (0.5, 0.9)
                    }]
                }],
                'lr_schedulers': []
            }, path)
    finally:
        for name in LIGHTNING_MODULES:
            del sys.modules[name]


def test_vqgan_lightning_checkpoint_keeps_encoder_quant_conv_and_codebook(tmp_path):
    assert importlib.util.find_spec('pytorch_lightning') is None
    encoder = random_state('vqgan')
    state = OrderedDict(encoder)
    state.update({
        'decoder.conv_in.weight': torch.randn(8, 8, 3, 3),
        'post_quant_conv.weight': torch.randn(8, 5, 1, 1),
        'loss.logvar': torch.zeros(()),
        'loss.discriminator.main.0.weight': torch.randn(4, 3, 4, 4)
    })
    lightning_checkpoint(tmp_path / 'last.ckpt', state)
    with pytest.raises(pickle.UnpicklingError):  # torch's weights-only loading alone refuses it
        torch.load(tmp_path / 'last.ckpt', weights_only=True)

    report = convert('vqgan', str(tmp_path / 'last.ckpt'), str(tmp_path / 'vqgan.pth'), TINY['vqgan'])
    result = converted(tmp_path / 'vqgan.pth')  # weights_only=True
    assert list(result) == list(encoder) and all(torch.equal(result[key], encoder[key]) for key in encoder)
    assert 'stand-ins for pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint' in report[0]
    assert 'dropped 4 (decoder: 1, loss: 2, post_quant_conv: 1)' in report[1]
    assert 'pytorch_lightning' not in sys.modules

    torch.save({'state_dict': random_state('restormer')}, tmp_path / 'other.ckpt')
    with pytest.raises(ConversionError, match='other.ckpt is not a vqgan checkpoint: no key starts with'):
        convert('vqgan', str(tmp_path / 'other.ckpt'), str(tmp_path / 'vqgan.pth'), TINY['vqgan'])
