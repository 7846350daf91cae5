"""KDWaveKDModel (WaveKD as SKD's Tab. I re-runs it): the terms it assembles (L1 to GT, L_WKD between the student's
and the teacher's outputs), where gradients go, configuration errors named by their key, and --auto_resume (DDP: in
test_distributed.py)."""
import os

import pytest
import torch

from conftest import (OPTIONS, assert_optimisers_resumed, build_model_from, differing_tensors, interrupted_and_resumed,
                      load_option, mae_by_loop, random_batch, run_train, same_tensors, shrink_option, snapshot,
                      training_steps)
from test_skd_model import tiny
from test_wavekd_loss import wavekd_by_bands

BACKBONES = ['wavekd_restormer_derain.yml', 'wavekd_uformer_deblur.yml', 'wavekd_drsformer_denoise.yml']
# Shrunk Uformer (img_size 16) trains its bottleneck at 1 x 1, so its attention windows hold one token: the softmax over
# one key is 1 whatever the query, and the query projection and position bias there get a zero gradient
ONE_TOKEN_ATTENTION = ('conv.blocks.0.attn.relative_position_bias_table', 'conv.blocks.0.attn.qkv.to_q.')


def wavekd_opt(tmp_path, root, option='wavekd_restormer_derain.yml'):
    return shrink_option(tiny(load_option(os.path.join(OPTIONS, option))), root, str(tmp_path), 'wavekd')


def model_from(opt, tmp_path):
    return build_model_from(opt, str(tmp_path / 'exp'))


@pytest.mark.parametrize('option', BACKBONES)
def test_one_step_trains_the_student_only(tmp_path, option):
    model = model_from(wavekd_opt(tmp_path, '/nonexistent', option), tmp_path)
    teacher = model.teachers['t']
    before = snapshot(teacher)
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_wave'}  # no L1 to the whole teacher output
    without_gradient = {name for name, p in model.net_g.named_parameters() if p.grad is None or not p.grad.any()}
    expected = {name for name, _ in model.net_g.named_parameters() if name.startswith(ONE_TOKEN_ATTENTION)}
    assert without_gradient == (expected if 'uformer' in option else set())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert len(model.optimizer_g.param_groups) == 1
    assert {id(p) for p in model.optimizer_g.param_groups[0]['params']} == {id(p) for p in model.net_g.parameters()}
    model.optimize_parameters(2)
    assert same_tensors(snapshot(teacher), before)


@pytest.mark.parametrize('levels, distance, loss_weight', [(4, 'l1', 0.4), (2, 'mse', 1.5)])
def test_the_terms_are_l1_to_gt_and_wavekd_between_student_and_teacher_outputs(tmp_path, levels, distance,
                                                                               loss_weight):
    opt = wavekd_opt(tmp_path, '/nonexistent')
    opt['train']['wavelet_opt'].update(levels=levels, distance=distance, loss_weight=loss_weight)
    model = model_from(opt, tmp_path)
    batch = random_batch(seed=3, scale=1, size=16)
    model.feed_data(batch)
    model.forward_networks()
    losses = model.compute_losses(1)
    student, teacher = model.output.detach(), model.teachers['t'](batch['lq']).detach()
    assert torch.equal(model.teacher_outputs['t'], teacher)  # the teacher on the LQ input
    assert losses['l_pix'].item() == pytest.approx(mae_by_loop(student, batch['gt']), rel=1e-5)
    expected = wavekd_by_bands(student.double(), teacher.double(), levels, distance, loss_weight)
    assert losses['l_wave'].item() == pytest.approx(expected, rel=1e-5)


def test_a_missing_wavelet_loss_is_refused(tmp_path):
    opt = wavekd_opt(tmp_path, '/nonexistent')
    opt['train'].pop('wavelet_opt')
    with pytest.raises(ValueError, match=r'^KDWaveKDModel needs train\.wavelet_opt'):
        model_from(opt, tmp_path)


@pytest.mark.parametrize('wavelet_opt, message', [
    ({'type': 'L1Loss'}, r'^train\.wavelet_opt\.type = L1Loss: KDWaveKDModel takes KDWaveKDLoss there$'),
    ({'type': 'KDWaveKDLoss', 'distance': 'l2'}, r"^train\.wavelet_opt: distance = 'l2': use one of \['l1', 'mse'\]$"),
    ({'type': 'KDWaveKDLoss', 'levels': 0}, r'^train\.wavelet_opt: levels must be a positive integer, got 0$'),
], ids=['another loss kind', 'unknown distance', 'no level'])
def test_a_wrong_wavelet_loss_is_refused_naming_the_key(tmp_path, wavelet_opt, message):
    opt = wavekd_opt(tmp_path, '/nonexistent')
    opt['train']['wavelet_opt'] = wavelet_opt
    with pytest.raises(ValueError, match=message):
        model_from(opt, tmp_path)


def test_train_py_stops_on_a_misspelt_wavelet_option_before_the_first_step(restoration_root, tmp_path):
    opt = wavekd_opt(tmp_path, restoration_root)
    opt['train']['wavelet_opt']['level'] = opt['train']['wavelet_opt'].pop('levels')
    result = run_train(opt, str(tmp_path), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and training_steps(result) == {}
    assert 'train.wavelet_opt.level (did you mean levels?)' in output


def test_auto_resume_restores_student_and_optimiser(restoration_root, tmp_path):
    opt = wavekd_opt(tmp_path, restoration_root)
    opt['model_type'] = 'KDRecordingWaveKDModel'
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert not differing_tensors(resumed['networks']['g'], at_2['g']), 'net_g did not resume'
    assert list(resumed['networks']) == ['g']  # WaveKD adds no trainable network
    assert_optimisers_resumed(saved, resumed)
    teacher = torch.load(opt['path']['pretrain_network_t'], weights_only=True)['params']
    assert not differing_tensors(resumed['teachers']['t'], teacher)
    models = tmp_path / 'experiments' / 'wavekd' / 'models'
    assert sorted(path.name for path in models.iterdir()) == ['net_g_2.pth', 'net_g_latest.pth']  # no teacher
