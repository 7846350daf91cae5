"""KDFACDModel (FACD and FCD) in-process on the shrunk option files: the logged L_SR (Eq. 2) and L_FACD (Eq. 3-4) equal
an independent recomputation from the model's networks on a batch where the student beats the teacher on one sample
(α of Eq. 1 per domain switch), gradients reach the student and the deep regressor only, wrong configurations fail
before the first step naming the option key; the regressors stay identical on two torchrun ranks and resume.

The losses themselves are checked against explicit loops in test_facd_losses.py; its loop references are reused here
as the independent computation of the printed formulas. Every option file trains 2 shrunk iterations in
test_option_files.py; the fork run is in test_basicsr_fork.py.
"""
import copy
import math

import pytest
import torch

from conftest import (assert_regressor_method_resumes, build_model_from, differing_tensors, mae_by_loop, random_batch,
                      same_tensors, snapshot, two_rank_run)
from test_facd_losses import facd_by_loops
from test_feature_model import edsr_features, shrunk_feature_opt


def regress_by_hand(state, students):
    """DR from its state dict: per sample F / sqrt(Σ F²) (Eq. 3), then five 1×1 convolutions with PReLU between
    them, written out as sums over channels (float64)."""
    regressed = []
    for j, feature in enumerate(students):
        x = torch.stack([sample / math.sqrt(sum(v * v for v in sample.flatten().tolist())) for sample in feature])
        for layer in range(5):
            index = 2 * layer
            if layer:
                slope = state[f'regressors.{j}.{index - 1}.weight'].double().view(1, -1, 1, 1)
                x = torch.where(x >= 0, x, slope * x)
            weight = state[f'regressors.{j}.{index}.weight'].double()[:, :, 0, 0]
            x = torch.einsum('oc,bchw->bohw', weight, x) + state[f'regressors.{j}.{index}.bias'].double().view(
                1, -1, 1, 1)
        regressed.append(x)
    assert f'regressors.{len(students) - 1}.9.weight' not in state  # exactly five convolutions
    return regressed


def batch_where_the_student_wins_on_sample_0(model, seed=0):
    """Batch 3: GT is the student's output (plus a little noise) on sample 0 and the teacher's on samples 1 and 2,
    so Eq. 1 gives α = [0, 1, 1]."""
    batch = random_batch(seed=seed, batch=3)
    with torch.no_grad():
        student, teacher = model.net_g(batch['lq']), model.teachers['t'](batch['lq'])
    noise = 0.01 * torch.randn(student.shape, generator=torch.Generator().manual_seed(seed))
    batch['gt'] = torch.cat([student[:1], teacher[1:]]) + noise
    return batch


@pytest.mark.parametrize('adaptive_image, adaptive_feature', [(True, True), (True, False), (False, False)],
                         ids=['facd', 'adaptive image only (Tab. 11 off)', 'fcd'])
def test_logged_losses_equal_the_printed_formulas_with_each_switch(demo_root, tmp_path, adaptive_image,
                                                                   adaptive_feature):
    opt = shrunk_feature_opt('facd', demo_root, tmp_path)
    opt['train']['facd'] = {'adaptive_image': adaptive_image, 'adaptive_feature': adaptive_feature}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    taps, feature_opt = opt['train']['feature_taps'], opt['train']['feature_opt']
    for step in (1, 2):
        batch = batch_where_the_student_wins_on_sample_0(model, seed=step)
        with torch.no_grad():  # the networks as they are before this step, run by the test itself
            student_out, teacher_out = model.net_g(batch['lq']).double(), model.teachers['t'](batch['lq']).double()
            students = edsr_features(model.net_g, batch['lq'], taps['network_g'])
            teachers = edsr_features(model.teachers['t'], batch['lq'], taps['network_t'])
            regressed = regress_by_hand(snapshot(model.helpers['reg']), [f.double() for f in students])
        gt = batch['gt'].double()
        alpha = [0.0 if mae_by_loop(student_out[i], gt[i]) < mae_by_loop(teacher_out[i], gt[i]) else 1.0
                 for i in range(3)]
        assert alpha == [0.0, 1.0, 1.0]
        image_alpha = alpha if adaptive_image else [1.0] * 3
        expected_sr = sum((2 - a) * mae_by_loop(student_out[i], gt[i]) + a * mae_by_loop(student_out[i], teacher_out[i])
                          for i, a in enumerate(image_alpha)) / (2 * 3)
        feature_alpha = alpha if adaptive_feature else [1.0] * 3
        expected_facd = facd_by_loops(regressed, [f.double() for f in teachers], feature_alpha,
                                      feature_opt['point_weights'], feature_opt['distance'], feature_opt['eps'],
                                      feature_opt['loss_weight']).item()
        expected_facd /= {'sum': 1, 'mean': 3}[feature_opt['reduction']]  # the option files: a mean over the batch
        for tap in model.taps.values():
            tap.features.clear()  # only the step's own forward may fill them
        model.feed_data(batch)
        model.optimize_parameters(step)
        assert list(model.log_dict) == ['l_sr', 'l_facd', 'alpha_mean']
        assert model.log_dict['l_sr'] == pytest.approx(expected_sr, rel=1e-5)
        assert model.log_dict['l_facd'] == pytest.approx(expected_facd, rel=1e-4)
        assert model.log_dict['alpha_mean'] == pytest.approx(2 / 3)  # logged with either switch, never optimised


def test_gradients_reach_the_student_and_every_regressor_weight_only(demo_root, tmp_path):
    opt = shrunk_feature_opt('facd', demo_root, tmp_path)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    teacher, regressor = model.teachers['t'], model.helpers['reg']
    teacher_before, regressor_before, student_before = snapshot(teacher), snapshot(regressor), snapshot(model.net_g)
    model.feed_data(random_batch(batch=3))
    model.optimize_parameters(1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in regressor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert same_tensors(snapshot(teacher), teacher_before)
    assert sorted(differing_tensors(regressor_before, snapshot(regressor))) == sorted(regressor_before)
    assert sorted(differing_tensors(student_before, snapshot(model.net_g))) == sorted(student_before)
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert {id(p) for p in regressor.parameters()} <= optimised
    assert not {id(p) for p in teacher.parameters()} & optimised


def test_all_alpha_zero_switches_the_feature_term_off(demo_root, tmp_path):
    """Where the student beats the teacher on every sample, FACD distils no feature (Eq. 4) and L_SR is L1 to GT."""
    model = build_model_from(shrunk_feature_opt('facd', demo_root, tmp_path), str(tmp_path / 'exp'))
    batch = random_batch(batch=3)
    with torch.no_grad():
        batch['gt'] = model.net_g(batch['lq'])
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert model.log_dict['alpha_mean'] == 0 and model.log_dict['l_facd'] == 0
    assert all(p.grad is None or not p.grad.any() for p in model.helpers['reg'].parameters())


def edit(opt, path, value):
    node = opt
    *parents, last = path.split('.')
    for key in parents:
        node = node[key]
    if value is None:
        node.pop(last)
    else:
        node[last] = value


@pytest.mark.parametrize('path, value, words', [
    ('datasets.train.batch_size_per_gpu', 1, 'datasets.train.batch_size_per_gpu = 1'),
    ('train.facd', {'adaptive': True}, r"train.facd: unknown option\(s\) \['adaptive'\]"),
    ('train.facd.adaptive_image', 'no', "train.facd.adaptive_image = 'no': use true or false"),
    ('network_reg.in_channels', [16, 16, 8], r'network_reg.in_channels = \[16, 16, 8\].*have \[16, 16, 16\]'),
    ('network_reg.out_channels', [16, 16, 16], r'network_reg.out_channels = \[16, 16, 16\].*have \[24, 24, 24\]'),
    ('network_reg.normalize_input', False, 'network_reg.normalize_input must be true'),
    ('network_reg', None, 'needs network_reg'),
    ('train.feature_taps.network_t', ['body.10', 'conv_after_body'], 'train.feature_taps'),
    ('train.feature_opt.point_weights', [0.5, 0.5], 'train.feature_taps'),
    ('train.image_opt', {'type': 'L1Loss'}, 'train.image_opt.type = L1Loss'),
    ('train.feature_opt', None, 'needs train.feature_opt'),
    ('train.feature_taps.network_t', ['conv_after_body', 'body.20', 'body.10'],
     r"train.feature_taps.network_t = \['conv_after_body', 'body.20', 'body.10'\]: list each module once, in the "
     r"order it runs in the forward pass, input side first .*: \['body.10', 'body.20', 'conv_after_body'\]"),
    ('train.feature_taps.network_g', ['body.10', 'body.4', 'conv_after_body'],
     r"train.feature_taps.network_g = \['body.10', 'body.4', .*: \['body.4', 'body.10', 'conv_after_body'\]"),
], ids=['batch of one', 'unknown switch', 'switch not a bool', 'reg in_channels', 'reg out_channels',
        'no normalisation', 'no regressor', 'taps not paired', 'weights not per tap', 'image loss type',
        'no feature loss', 'teacher taps reversed', 'student taps out of order'])
def test_a_wrong_configuration_fails_before_the_first_step_naming_the_key(demo_root, tmp_path, path, value, words):
    opt = shrunk_feature_opt('facd', demo_root, tmp_path)
    edit(opt, path, copy.deepcopy(value))
    with pytest.raises(ValueError, match=words):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_two_cpu_ranks_hold_identical_students_and_regressors(demo_root, tmp_path):
    opt = shrunk_feature_opt('fcd', demo_root, tmp_path, 'ddp')  # FCD: α = 0 (a random teacher worse
    # than the student on every sample) would leave the regressor without gradient
    opt['model_type'] = 'KDRecordingFACDModel'
    init, final, _ = two_rank_run(opt, str(tmp_path))
    for name in ('g', 'reg'):
        assert not differing_tensors(init[0][name], init[1][name]), f'net_{name}: DDP broadcasts rank 0 at wrapping'
        assert not differing_tensors(final[0][name], final[1][name]), f'net_{name}: the ranks diverged'
        assert differing_tensors(init[1][name], final[1][name]), f'net_{name} did not train'


def test_auto_resume_restores_the_regressors_student_and_optimiser(demo_root, tmp_path):
    opt = shrunk_feature_opt('fcd', demo_root, tmp_path, 'resume')  # FCD: the regressor always trains
    opt['model_type'] = 'KDRecordingFACDModel'
    assert_regressor_method_resumes(opt, str(tmp_path))
