"""KDFeatureModel in-process on the shrunk FitNet, AT, FAKD and LSFD option files: the taps hold the configured modules'
outputs, every logged loss equals an independent recomputation, the regressor trains and the teacher does not; a
regressor or tap pairing that does not fit, and a loss argument the loss refuses, stop the build naming the key.

Covered elsewhere, not repeated here: the 2-iteration ``train.py`` run of every option file (test_option_files.py),
FitNet's and LSFD's regressors kept identical on two torchrun ranks (test_distributed.py), FitNet's resumed from
``net_reg_<iter>.pth`` (test_resume.py; LSFD's here), LSFD's term reaching the student and the whole regressor
(test_distillation_paths.py).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import (OPTIONS, assert_regressor_method_resumes, build_model_from, load_option, random_batch,
                      same_tensors, save_random_weights, shrink_option, snapshot)
from test_feature_losses import (attention_transfer_reference, hint_reference, local_selective_reference,
                                 spatial_affinity_reference)

REGRESSED = ('fitnet', 'lsfd')  # the methods whose student features go through network_reg
TEACHER_WIDTH = 24  # the shrunk student has 16 channels: the regressor (FitNet, LSFD) or the loss (AT, FAKD) bridges


def shrunk_feature_opt(method, demo_root, tmp_path, name=None):
    """options/<method>_edsr_x2.yml shrunk (run ``name``, default the method), with a 24-channel random teacher (and
    regressor output) in tmp_path."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, f'{method}_edsr_x2.yml')), demo_root, str(tmp_path),
                        name or method)
    opt['network_t']['num_feat'] = TEACHER_WIDTH
    save_random_weights(opt['network_t'], opt['path']['pretrain_network_t'], seed=1)
    if 'network_reg' in opt:
        opt['network_reg']['out_channels'] = [TEACHER_WIDTH] * len(opt['network_reg']['out_channels'])
    return opt


def edsr_features(net, lq, paths):
    """EDSR's intermediate features by module path, recomputed with F.conv2d from the weights: no module is called,
    so no forward hook fires."""

    def conv(module, x):
        return F.conv2d(x, module.weight, module.bias, padding=module.padding)

    x = conv(net.conv_first, (lq - net.mean) * net.img_range)
    features = {}
    for index, block in enumerate(net.body):
        x = x + conv(block.conv2, F.relu(conv(block.conv1, x))) * block.res_scale
        features[f'body.{index}'] = x
    features['conv_after_body'] = conv(net.conv_after_body, x)
    return [features[path] for path in paths]


def regress_by_hand(state, students):
    """The 1x1 regressor from its state dict, per tap: out[o] = Σ_c W[o, c] · in[c] + b[o] for each convolution
    (FitNet: one), with PReLU x ↦ max(x, 0) + a[o] · min(x, 0) between them (LSFD: five convolutions)."""
    outputs = []
    for i, x in enumerate(students):
        layers = sorted({int(key.split('.')[2]) for key in state if key.startswith(f'regressors.{i}.')})
        for layer in layers:
            prefix = f'regressors.{i}.{layer}.'
            if prefix + 'bias' in state:
                x = torch.einsum('oc,bchw->bohw', state[prefix + 'weight'][:, :, 0, 0], x) \
                    + state[prefix + 'bias'].view(1, -1, 1, 1)
            else:
                x = x.clamp(min=0) + state[prefix + 'weight'].view(1, -1, 1, 1) * x.clamp(max=0)
        outputs.append(x)
    return outputs


def expected_feature_loss(method, opt, students, teachers, regressor_state):
    feature_opt = opt['train']['feature_opt']
    if method == 'fitnet':
        return hint_reference(regress_by_hand(regressor_state, students), teachers, feature_opt['loss_weight'])
    if method == 'at':
        return attention_transfer_reference(students, teachers, feature_opt['beta'], feature_opt['loss_weight'])
    if method == 'lsfd':
        return local_selective_reference(regress_by_hand(regressor_state, students), teachers, feature_opt['selective'],
                                         feature_opt['temperature'], feature_opt['loss_weight'])
    return spatial_affinity_reference(students, teachers, feature_opt['loss_weight'])


@pytest.mark.parametrize('method, terms', [
    ('fitnet', ['l_pix', 'l_kd', 'l_feat']),
    ('at', ['l_pix', 'l_feat']),  # AT distils features only: no output term
    ('fakd', ['l_pix', 'l_kd', 'l_feat']),
    ('lsfd', ['l_pix', 'l_kd', 'l_feat']),
])
def test_steps_tap_the_configured_modules_and_log_the_method_losses(method, terms, demo_root, tmp_path):
    opt = shrunk_feature_opt(method, demo_root, tmp_path)
    if method == 'fakd':
        opt['train']['feature_opt']['chunk_size'] = 100  # 16x16 LR patches: 256 rows of A in chunks 100, 100, 56
    model = build_model_from(opt, str(tmp_path / 'exp'))
    student, teacher = model.net_g, model.teachers['t']
    assert ('reg' in model.helpers) == (method in REGRESSED)
    taps = opt['train']['feature_taps']
    teacher_before, student_before = snapshot(teacher), snapshot(student)
    regressor_before = snapshot(model.helpers['reg']) if method in REGRESSED else None
    weights = {name: opt['train'][f'{name}_opt']['loss_weight'] for name in ('pixel', 'kd')
               if f'{name}_opt' in opt['train']}

    for step in (1, 2):
        batch = random_batch(seed=step)
        regressor_state = snapshot(model.helpers['reg']) if method in REGRESSED else None
        with torch.no_grad():  # the networks as they are before this step, run by the test itself
            student_out, teacher_out = student(batch['lq']), teacher(batch['lq'])
            expected_s = edsr_features(student, batch['lq'], taps['network_g'])
            expected_t = edsr_features(teacher, batch['lq'], taps['network_t'])
            expected_feat = expected_feature_loss(method, opt, expected_s, expected_t, regressor_state).item()
        for tap in model.taps.values():
            tap.features.clear()  # the calls above fired the hooks: only the step's own forward may fill them
        model.feed_data(batch)
        model.optimize_parameters(step)

        tapped_s, tapped_t = model.taps['g'].outputs(), model.taps['t'].outputs()
        assert [f.shape[1] for f in tapped_s] == [16] * 3 and [f.shape[1] for f in tapped_t] == [TEACHER_WIDTH] * 3
        assert all(f.requires_grad for f in tapped_s) and not any(f.requires_grad for f in tapped_t)
        for path, got, want in zip(taps['network_g'] + taps['network_t'], tapped_s + tapped_t, expected_s + expected_t):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), f'{path}: not the output of that module'
        assert list(model.log_dict) == terms
        assert model.log_dict['l_feat'] == pytest.approx(expected_feat, rel=1e-4)
        assert model.log_dict['l_pix'] == pytest.approx(
            weights['pixel'] * (student_out - batch['gt']).abs().mean().item(), rel=1e-5)
        if 'l_kd' in terms:
            assert model.log_dict['l_kd'] == pytest.approx(
                weights['kd'] * (student_out - teacher_out).abs().mean().item(), rel=1e-5)

    assert same_tensors(snapshot(teacher), teacher_before)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not same_tensors(snapshot(student), student_before)
    if method in REGRESSED:
        regressor_after = snapshot(model.helpers['reg'])
        changed = [k for k in regressor_before if not torch.equal(regressor_before[k], regressor_after[k])]
        assert sorted(changed) == sorted(regressor_before), 'every regressor weight must train'


def test_taps_out_of_execution_order_are_refused_before_the_first_step(demo_root, tmp_path):
    """The lists pair by index, input side first: EDSR's body blocks all share a shape, so a teacher list in reversed
    depth order would pair the student's shallowest tap with the teacher's deepest, silently."""
    opt = shrunk_feature_opt('at', demo_root, tmp_path)
    opt['train']['feature_taps']['network_t'].reverse()
    with pytest.raises(ValueError, match=r"train.feature_taps.network_t = \['conv_after_body', 'body.20', 'body.10'\]"
                       r": list each module once, in the order it runs in the forward pass, input side first .*: "
                       r"\['body.10', 'body.20', 'conv_after_body'\]"):
        build_model_from(opt, str(tmp_path / 'exp'))


@pytest.mark.parametrize('change, words', [
    (lambda opt: opt['network_reg'].update(out_channels=[24, 24, 16]),
     r"network_reg.out_channels = \[24, 24, 16\] but the taps train.feature_taps.network_t = "
     r"\['body.10', 'body.20', 'conv_after_body'\] have \[24, 24, 24\] channels"),
    (lambda opt: opt.pop('network_reg'),
     r"train.feature_taps: network_g.body.4 has 16 channels but network_t.body.10 24; train.feature_opt compares "
     r"them element by element: add a regressor network_reg"),
    (lambda opt: opt['train']['feature_opt'].update(temperature=0),
     r'train.feature_opt: KDLocalSelectiveFeatureLoss: temperature must be positive, got 0'),
    (lambda opt: opt['train']['feature_opt'].update(selective='no'),
     r"train.feature_opt: KDLocalSelectiveFeatureLoss: selective must be true or false, got 'no'"),
], ids=['regressor of other channels', 'no regressor', 'temperature 0', 'selective not a bool'])
def test_a_configuration_that_does_not_fit_stops_the_build_naming_the_key(change, words, demo_root, tmp_path):
    opt = shrunk_feature_opt('lsfd', demo_root, tmp_path)
    change(opt)
    with pytest.raises(ValueError, match=words):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_lsfd_auto_resume_restores_the_regressor_student_and_optimiser(demo_root, tmp_path):
    opt = shrunk_feature_opt('lsfd', demo_root, tmp_path, 'resume')
    opt['model_type'] = 'KDRecordingFeatureModel'
    assert_regressor_method_resumes(opt, str(tmp_path))
