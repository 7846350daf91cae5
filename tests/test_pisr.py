"""PISR: the VID loss (KDVIDLoss) against loops over its printed per-element likelihoods, the VID regressor and the
teacher's encoder (KDPISREncoder, KDPISRTeacher), and both stages (KDPISRTeacherModel, KDPISRStudentModel): the terms
of a step recomputed by hand, where gradients go, the student's checkpoint in a plain SRModel, errors named by their
key, --auto_resume. DDP in test_distributed.py, the gradient path of the VID term in test_distillation_paths.py."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from basicsr.archs import build_network

from conftest import (OPTIONS, assert_networks_resumed, assert_optimisers_resumed, build_model_from, differing_tensors,
                      fixed, interrupted_and_resumed, load_option, loss, random_batch, save_random_weights,
                      shrink_option)

TEACHER_WIDTH = 24  # the shrunk teacher decoder's width, unlike the student's 16: network_vid maps 16 -> 24


def pisr_opt(demo_root, tmp_path, name='pisr', arch='edsr'):
    """options/pisr_<arch>_x2.yml shrunk, with a 24-channel random stage-1 teacher in tmp_path."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, f'pisr_{arch}_x2.yml')), demo_root, str(tmp_path), name)
    opt['network_t']['decoder']['num_feat'] = TEACHER_WIDTH
    save_random_weights(opt['network_t'], opt['path']['pretrain_network_t'], seed=1)
    opt['network_vid']['out_channels'] = [TEACHER_WIDTH]
    return opt


def stage1_opt(demo_root, tmp_path, name='stage1', arch='edsr'):
    return shrink_option(load_option(os.path.join(OPTIONS, f'pisr_stage1_{arch}_x2.yml')), demo_root, str(tmp_path),
                         name)


# ------------------------------------------------------------------------------------------------ VID loss
def nll_by_loop(means, scales, teachers, distribution, scale_factor, eps, loss_weight):
    """The per-element negative log-likelihood, element by element: Laplace log(2b) + |t - mu|/b with
    b = scale_factor*s + eps, Gaussian 1/2 log(2 pi v) + (t - mu)^2/(2v) with v = scale_factor*s + eps; s broadcast
    over the dimensions it shares (size 1); the mean over (B, C, H, W) of each tap, summed, times loss_weight."""
    total = 0.0
    for mean, scale, teacher in zip(means, scales, teachers):
        B, C, H, W = teacher.shape
        tap = 0.0
        for b in range(B):
            for c in range(C):
                for h in range(H):
                    for w in range(W):
                        s = scale[b, c if scale.shape[1] > 1 else 0, h if scale.shape[2] > 1 else 0,
                                  w if scale.shape[3] > 1 else 0].item()
                        t, mu = teacher[b, c, h, w].item(), mean[b, c, h, w].item()
                        spread = scale_factor * s + eps
                        if distribution == 'laplace':
                            tap += math.log(2 * spread) + abs(t - mu) / spread
                        else:
                            tap += 0.5 * math.log(2 * math.pi * spread) + (t - mu)**2 / (2 * spread)
        total += tap / (B * C * H * W)
    return loss_weight * total


@pytest.mark.parametrize('distribution', ['laplace', 'gaussian'])
@pytest.mark.parametrize('scale_factor, eps, loss_weight', [(None, 1e-8, 1.0), (0.5, 0.1, 1e-3)])
def test_vid_loss_equals_the_loop_definition(distribution, scale_factor, eps, loss_weight):
    # two taps: a scale per channel and position on the first, one per channel (position-shared) on the second
    teachers = [fixed(2, 3, 3, 4, seed=1), fixed(2, 2, 2, 3, seed=2)]
    means = [fixed(2, 3, 3, 4, seed=3), fixed(2, 2, 2, 3, seed=4)]
    scales = [F.softplus(fixed(2, 3, 3, 4, seed=5)), F.softplus(fixed(2, 2, 1, 1, seed=6))]
    kwargs = {'distribution': distribution, 'eps': eps, 'loss_weight': loss_weight}
    if scale_factor is not None:
        kwargs['scale_factor'] = scale_factor
    value = loss('KDVIDLoss', **kwargs)(means, scales, teachers)
    authors_factor = {'laplace': 0.1, 'gaussian': 1e-3}[distribution]  # the authors' defaults
    expected = nll_by_loop(means, scales, teachers, distribution, scale_factor or authors_factor, eps, loss_weight)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_vid_loss_with_a_scale_shared_over_channels_equals_the_loop():
    teachers, means = [fixed(2, 3, 2, 2, seed=7)], [fixed(2, 3, 2, 2, seed=8)]
    scales = [F.softplus(fixed(2, 1, 2, 2, seed=9))]
    value = loss('KDVIDLoss', distribution='laplace', scale_factor=0.2)(means, scales, teachers)
    assert value.item() == pytest.approx(nll_by_loop(means, scales, teachers, 'laplace', 0.2, 1e-8, 1.0), rel=1e-10)


@pytest.mark.parametrize('kwargs, message', [
    ({'distribution': 'cauchy'}, r"distribution must be one of \['laplace', 'gaussian'\], got 'cauchy'"),
    ({'scale_factor': 0}, r'scale_factor must be a positive number, got 0'),
    ({'eps': -1.0}, r'eps must be a positive number, got -1.0'),
])
def test_vid_loss_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss('KDVIDLoss', **kwargs)


def test_vid_loss_refuses_unpaired_taps():
    with pytest.raises(ValueError, match=r'tap 0 has predicted means \(1, 2, 2, 2\) but teacher features'):
        loss('KDVIDLoss')([fixed(1, 2, 2, 2)], [fixed(1, 2, 2, 2).exp()], [fixed(1, 3, 2, 2)])


# ------------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize('sharing, scale_shape', [('none', (2, 5, 3, 4)), ('position', (2, 5, 1, 1)),
                                                  ('channel', (2, 1, 3, 4)), ('all', (2, 1, 1, 1))])
def test_vid_regressor_heads_by_hand(sharing, scale_shape):
    torch.manual_seed(0)
    net = build_network({'type': 'KDVIDRegressor', 'in_channels': [3], 'out_channels': [5], 'sharing': sharing})
    x = fixed(2, 3, 3, 4, dtype=torch.float32)
    (mean, ), (scale, ) = net([x])

    def head(seq, x):  # conv 1x1, PReLU with one slope, conv 1x1, by hand
        hidden = F.conv2d(x, seq[0].weight, seq[0].bias)
        hidden = torch.where(hidden > 0, hidden, seq[1].weight * hidden)
        return F.conv2d(hidden, seq[2].weight, seq[2].bias)

    assert torch.allclose(mean, head(net.means[0], x), atol=1e-6)
    raw = head(net.scales[0][0], x)
    if scale_shape[2] == 1:
        raw = raw.mean((2, 3), keepdim=True)
    assert scale.shape == scale_shape and torch.allclose(scale, torch.log1p(raw.exp()), atol=1e-6)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_the_encoder_makes_an_lr_size_image_and_the_teacher_an_hr_size_one(scale):
    torch.manual_seed(0)
    encoder = {'type': 'KDPISREncoder', 'scale': scale, 'num_feat': 8, 'num_shrink': 4}
    decoder = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': scale}
    teacher = build_network({'type': 'KDPISRTeacher', 'encoder': encoder, 'decoder': decoder})
    hr = torch.rand(1, 3, 5 * scale, 7 * scale)
    assert teacher.encoder(hr).shape == (1, 3, 5, 7) and teacher(hr).shape == hr.shape
    assert torch.equal(teacher(hr), teacher.decoder(teacher.encoder(hr)))
    strides = [m.stride for m in teacher.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(1, 1), (scale, scale), (1, 1), (1, 1)]
    with pytest.raises(ValueError, match=rf'encoder.scale = {scale + 1} but decoder.upscale = {scale}'):
        build_network({'type': 'KDPISRTeacher', 'encoder': {**encoder, 'scale': scale + 1}, 'decoder': decoder})


# ------------------------------------------------------------------------------------------------ stage 1
def test_stage1_step_is_reconstruction_plus_imitation_and_trains_encoder_and_decoder(demo_root, tmp_path):
    opt = stage1_opt(demo_root, tmp_path)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    bare = model.get_bare_model(model.net_g)
    batch = random_batch(scale=2)
    model.feed_data(batch)
    before = {k: v.clone() for k, v in bare.state_dict().items()}
    with torch.no_grad():
        encoded = bare.encoder(batch['gt'])
        l_pix = (bare.decoder(encoded) - batch['gt']).abs().mean()
        l_im = 1e-4 * (encoded - batch['lq']).abs().mean()
    model.optimize_parameters(1)
    assert model.log_dict['l_pix'] == pytest.approx(l_pix.item(), rel=1e-5)
    assert model.log_dict['l_im'] == pytest.approx(l_im.item(), rel=1e-5)
    without_grad = [k for k, p in bare.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not without_grad and any(k.startswith('encoder.') for k, _ in bare.named_parameters())
    assert not [k for k, v in bare.state_dict().items() if torch.equal(v, before[k]) and 'mean' not in k]


def test_stage1_starts_its_decoder_from_pretrain_network_decoder_and_validates_on_gt(demo_root, tmp_path):
    opt = stage1_opt(demo_root, tmp_path)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    decoder = torch.load(opt['path']['pretrain_network_decoder'], weights_only=True)['params']
    assert not differing_tensors(model.get_bare_model(model.net_g).decoder.state_dict(), decoder)
    batch = random_batch(scale=2)
    model.feed_data(batch)
    model.test()
    with torch.no_grad():
        assert torch.allclose(model.output, model.net_g(batch['gt']))
    assert torch.equal(model.lq, batch['lq'])


@pytest.mark.parametrize('change, message', [
    (lambda opt: opt['train'].pop('imitation_opt'), r'needs train.pixel_opt \(L_recon.*and train.imitation_opt'),
    (lambda opt: opt.update(network_t=dict(opt['network_g']['decoder'])),
     r"reads no frozen teacher; remove \['network_t'\]"),
    (lambda opt: opt['network_g']['decoder'].update(upscale=3), r'network_g.decoder.upscale = 3 but scale = 2'),
    (lambda opt: opt['network_g'].update(type='EDSR'), r'network_g.type = EDSR: PISR\'s teacher is a KDPISRTeacher'),
    (lambda opt: opt['path'].update(pretrain_network_decoder='/nonexistent/decoder.pth'),
     r'path.pretrain_network_decoder = /nonexistent/decoder.pth: no such file'),
], ids=['no imitation loss', 'a frozen teacher', 'scales differ', 'not a PISR teacher', 'missing decoder file'])
def test_stage1_wrong_configuration_fails_before_the_first_step(demo_root, tmp_path, change, message):
    opt = stage1_opt(demo_root, tmp_path)
    change(opt)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_model_from(opt, str(tmp_path / 'exp'))


# ------------------------------------------------------------------------------------------------ stage 2
def test_stage2_step_is_l1_plus_vid_on_the_teacher_fed_gt(demo_root, tmp_path):
    opt = pisr_opt(demo_root, tmp_path)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    nets = (model.net_g, model.teachers['t'], model.helpers['vid'])
    student, teacher, vid = (model.get_bare_model(net) for net in nets)
    batch = random_batch(scale=2)
    model.feed_data(batch)
    kept = {}
    hooks = [net.conv_after_body.register_forward_hook(lambda m, i, o, key=key: kept.__setitem__(key, o.clone()))
             for key, net in (('s', student), ('t', teacher.decoder))]
    with torch.no_grad():
        output = student(batch['lq'])
        teacher(batch['gt'])  # the teacher sees GT, the privileged information
        mean, scale = vid.means[0](kept['s']), vid.scales[0](kept['s'])
    for hook in hooks:
        hook.remove()
    variance = 1e-3 * scale + 1e-8
    nll = 0.5 * torch.log(2 * math.pi * variance) + (kept['t'] - mean)**2 / (2 * variance)
    model.optimize_parameters(1)
    assert model.log_dict['l_pix'] == pytest.approx((output - batch['gt']).abs().mean().item(), rel=1e-5)
    assert model.log_dict['l_vid'] == pytest.approx(1e-6 * nll.mean().item(), rel=1e-4)


def test_stage2_one_step_trains_the_student_and_the_vid_regressor_never_the_teacher(demo_root, tmp_path):
    opt = pisr_opt(demo_root, tmp_path)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    teacher_before = {k: v.clone() for k, v in model.teachers['t'].state_dict().items()}
    model.feed_data(random_batch(scale=2))
    model.optimize_parameters(1)
    for name, net in (('g', model.net_g), ('vid', model.helpers['vid'])):
        missing = [k for k, p in net.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
        assert not missing, f'net_{name}: no gradient reaches {missing}'
    assert all(p.grad is None and not p.requires_grad for p in model.teachers['t'].parameters())
    assert not differing_tensors(model.teachers['t'].state_dict(), teacher_before)
    assert len(model.optimizer_g.param_groups) == 2  # the student's and the VID regressor's


def test_stage2_checkpoint_is_a_plain_network_and_the_regressor_is_saved_beside_it(demo_root, tmp_path):
    opt = pisr_opt(demo_root, tmp_path)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch(scale=2))
    model.optimize_parameters(1)
    model.save(-1, -1)
    models = tmp_path / 'exp' / 'models'
    assert sorted(os.listdir(models)) == ['net_g_latest.pth', 'net_vid_latest.pth']
    plain = {'name': 'plain', 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 0, 'network_g': opt['network_g'],
             'path': {'pretrain_network_g': str(models / 'net_g_latest.pth'), 'strict_load_g': True}}
    srmodel = build_model_from(plain, str(tmp_path / 'plain'), is_train=False)
    assert not differing_tensors(srmodel.net_g.state_dict(), model.get_bare_model(model.net_g).state_dict())


@pytest.mark.parametrize('change, message', [
    (lambda opt: opt['train'].pop('vid_opt'), r'KDPISRStudentModel needs train.vid_opt'),
    (lambda opt: opt.pop('network_vid'), r'KDPISRStudentModel needs train.vid_opt .* and network_vid'),
    (lambda opt: opt['train'].pop('feature_taps'), r'needs train.feature_taps.network_g and .network_t'),
    (lambda opt: opt['network_vid'].update(out_channels=[16]),
     r"network_vid.out_channels = \[16\] but the taps train.feature_taps.network_t = \['decoder.conv_after_body'\] "
     r'have \[24\] channels'),
    (lambda opt: opt['train'].update(teacher_inputs={'t': 'lq'}),
     r'train.teacher_inputs: KDPISRStudentModel always feeds'),
    (lambda opt: opt['network_t']['decoder'].update(upscale=3), r'network_t.decoder.upscale = 3 but scale = 2'),
    (lambda opt: opt['network_t'].update(type='EDSR'), r"network_t.type = EDSR: PISR's teacher is a KDPISRTeacher"),
    (lambda opt: opt['train']['feature_taps'].update(network_t=['decoder.conv_after_body', 'decoder.conv_last']),
     r'must pair the taps: one teacher tap per student tap'),
    (lambda opt: opt['train']['vid_opt'].update(distribution='cauchy'),
     r'train.vid_opt: KDVIDLoss: distribution must be one of'),
    (lambda opt: opt['train']['vid_opt'].update(type='L1Loss'),
     r'train.vid_opt.type = L1Loss: KDPISRStudentModel takes'),
], ids=['no vid_opt', 'no network_vid', 'no taps', 'regressor channels', 'teacher inputs', 'teacher scale',
        'not a PISR teacher', 'unpaired taps', 'distribution', 'loss kind'])
def test_stage2_wrong_configuration_fails_before_the_first_step(demo_root, tmp_path, change, message):
    opt = pisr_opt(demo_root, tmp_path)
    change(opt)
    with pytest.raises(ValueError, match=message):
        build_model_from(opt, str(tmp_path / 'exp'))


# ------------------------------------------------------------------------------------------------ resume
def test_stage2_auto_resume_restores_student_regressor_and_optimiser(demo_root, tmp_path):
    opt = pisr_opt(demo_root, tmp_path, 'resume')
    opt['model_type'] = 'KDRecordingPISRStudentModel'
    saved, resumed, at_iter_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert_networks_resumed(resumed, at_iter_2, ('g', 'vid'))
    assert len(saved['optimizers'][0]['param_groups']) == 2
    assert_optimisers_resumed(saved, resumed)
    teacher = torch.load(opt['path']['pretrain_network_t'], weights_only=True)['params']
    assert not differing_tensors(resumed['teachers']['t'], teacher)


def test_stage1_auto_resume_restores_the_teacher_and_optimiser_not_the_decoder_file(demo_root, tmp_path):
    opt = stage1_opt(demo_root, tmp_path, 'resume1')
    opt['model_type'] = 'KDRecordingPISRTeacherModel'
    saved, resumed, at_iter_2, result = interrupted_and_resumed(opt, str(tmp_path))
    assert not differing_tensors(resumed['networks']['g'], at_iter_2['g'])
    assert_optimisers_resumed(saved, resumed)
    log = result.stdout + result.stderr
    assert 'path.pretrain_network_decoder' in log and 'not read' in log
