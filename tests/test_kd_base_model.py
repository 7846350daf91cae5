"""KDBaseModel in-process, in the shape of BasicSR's test_sr_model.py: build, feed_data, optimize_parameters, save,
test; frozen teachers, exact loss values, feature taps, trainable helpers and configuration errors."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from basicsr.models import build_model
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel

from basicsr_kd.parsed_options import parsed_options
from conftest import build_model_from, random_batch, same_tensors, save_random_weights, snapshot
from kd_models.kd_base_model import KDBaseModel, option_teacher_names

if 'KDTestHintModel' not in MODEL_REGISTRY:  # the registry refuses a second registration of the name

    @MODEL_REGISTRY.register()
    class KDTestHintModel(KDBaseModel):
        """Pixel loss plus an MSE between regressed student taps and teacher taps (a FitNet in miniature)."""

        helper_networks = ('reg', )

        def compute_losses(self, current_iter):
            losses = super().compute_losses(current_iter)
            regressed = self.helpers['reg'](self.taps['g'].outputs())
            losses['l_hint'] = sum(F.mse_loss(s, t) for s, t in zip(regressed, self.taps['t'].outputs()))
            return losses


def test_teacher_is_frozen_and_losses_match_the_formula(logits_opt, tmp_path):
    model = build_model_from(logits_opt, str(tmp_path / 'exp'))
    teacher = model.teachers['t']
    teacher_before, student_before = snapshot(teacher), snapshot(model.net_g)
    batch = random_batch()
    model.feed_data(batch)
    for step in range(1, 4):
        with torch.no_grad():  # the same networks in the state before the step, run by the test itself
            student_out, teacher_out = model.net_g(batch['lq']), teacher(batch['lq'])
        model.optimize_parameters(step)
        assert model.log_dict['l_pix'] == pytest.approx((student_out - batch['gt']).abs().mean().item(), rel=1e-5)
        assert model.log_dict['l_kd'] == pytest.approx((student_out - teacher_out).abs().mean().item(), rel=1e-5)
    model.net_g.train()
    assert not teacher.training and not model.net_g_ema.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert same_tensors(snapshot(teacher), teacher_before)
    assert not same_tensors(snapshot(model.net_g), student_before)
    assert all(p.grad is not None for p in model.net_g.parameters())


def test_saved_student_has_no_teacher_and_loads_as_srmodel(logits_opt, tmp_path):
    model = build_model_from(logits_opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch())
    for step in range(1, 4):
        model.optimize_parameters(step)
    model.save(0, 3)
    models = tmp_path / 'exp' / 'models'
    assert sorted(os.listdir(models)) == ['net_g_3.pth']
    saved = torch.load(models / 'net_g_3.pth', weights_only=True)
    assert sorted(saved) == ['params', 'params_ema']
    assert set(saved['params']) == set(saved['params_ema']) == set(model.net_g.state_dict())
    assert same_tensors(saved['params'], model.net_g.state_dict())
    plain = {
        'name': 'plain',
        'model_type': 'SRModel',
        'scale': 2,
        'num_gpu': 0,
        'network_g': logits_opt['network_g'],
        'path': {
            'pretrain_network_g': str(models / 'net_g_3.pth'),
            'param_key_g': 'params_ema',
            'strict_load_g': True
        }
    }
    sr_model = build_model_from(plain, str(tmp_path / 'plain'), is_train=False)
    assert type(sr_model).__name__ == 'SRModel'
    lq = random_batch(1)['lq']
    for m in (sr_model, model):
        m.feed_data({'lq': lq})
        m.test()  # BasicSR's test(): the EMA network when there is one
    assert torch.equal(sr_model.output, model.output)
    with torch.no_grad():
        assert not torch.equal(sr_model.output, model.net_g(lq))  # it is the EMA student, not the raw one


def test_feature_taps_keep_the_configured_modules(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train']['feature_taps'] = {'network_g': ['body.0', 'conv_after_body'], 'network_t': ['body.0']}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    batch = random_batch()
    model.feed_data(batch)
    model.optimize_parameters(1)
    student, teacher = model.taps['g'].outputs(), model.taps['t'].outputs()
    assert [tuple(f.shape) for f in student] == [(2, 16, 16, 16)] * 2
    assert [tuple(f.shape) for f in teacher] == [(2, 16, 16, 16)]
    assert student[0].requires_grad and not teacher[0].requires_grad
    with torch.no_grad():  # the teacher's first body block on its own head's output
        net_t = model.teachers['t']
        head = net_t.conv_first((batch['lq'] - net_t.mean) * net_t.img_range)
        assert torch.allclose(teacher[0], net_t.body[0](head), atol=1e-5)


def test_unknown_tap_path_names_the_option_and_close_names(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train']['feature_taps'] = {'network_g': ['body.9']}
    with pytest.raises(KeyError) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    message = error.value.args[0]
    assert message.startswith('train.feature_taps.network_g:') and '"body.9"' in message and "'body.0'" in message


def hint_opt(base):
    opt = copy.deepcopy(base)
    opt['model_type'] = 'KDTestHintModel'
    opt['train'].pop('kd_opt')
    opt['network_reg'] = {'type': 'KDConvRegressor', 'in_channels': [16], 'out_channels': [16]}
    opt['train']['feature_taps'] = {'network_g': ['body.0'], 'network_t': ['body.0']}
    return opt


def test_trainable_helper_is_optimised_saved_and_restored(logits_opt, tmp_path):
    opt = hint_opt(logits_opt)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    regressor = model.helpers['reg']
    before = snapshot(regressor)
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert {id(p) for p in regressor.parameters()} <= optimised
    model.feed_data(random_batch())
    for step in range(1, 4):
        model.optimize_parameters(step)
    assert 'l_hint' in model.log_dict and model.log_dict['l_hint'] > 0
    assert not same_tensors(snapshot(regressor), before)
    model.save(0, 3)
    saved = tmp_path / 'exp' / 'models' / 'net_reg_3.pth'
    assert sorted(os.listdir(saved.parent)) == ['net_g_3.pth', 'net_reg_3.pth']
    assert same_tensors(torch.load(saved, weights_only=True)['params'], regressor.state_dict())
    opt['path']['pretrain_network_reg'] = str(saved)
    restored = build_model_from(opt, str(tmp_path / 'exp2')).helpers['reg']
    assert same_tensors(snapshot(restored), snapshot(regressor))


def two_teachers(opt, tmp_path):
    opt['network_t1'] = opt['network_t2'] = opt.pop('network_t')
    opt['path']['pretrain_network_t1'] = opt['path']['pretrain_network_t2'] = opt['path'].pop('pretrain_network_t')


def other_arch_weights(opt, tmp_path):
    path = save_random_weights(dict(opt['network_t'], num_feat=8), str(tmp_path / 'other.pth'))
    opt['path']['pretrain_network_t'] = path


@pytest.mark.parametrize(
    'change, error, words', [
        (lambda o, p: o['path'].update(pretrain_network_t=str(p / 'missing.pth')), FileNotFoundError,
         ['path.pretrain_network_t', 'missing.pth']),
        (lambda o, p: o['path'].update(pretrain_network_t=None), ValueError, ['path.pretrain_network_t is not set']),
        (lambda o, p: o['network_t'].update(upscale=4), ValueError, ['network_t.upscale = 4', 'scale = 2']),
        (lambda o, p: o['path'].update(ignore_resume_networks=[]), ValueError, ['path.ignore_resume_networks']),
        (other_arch_weights, RuntimeError, ['path.pretrain_network_t', 'other.pth']),
        (lambda o, p: o['train'].update(teacher_autocast='fp8'), ValueError, ['train.teacher_autocast', 'fp8']),
        (lambda o, p: o['train']['optim_g'].update(type='Adamm'), ValueError, ['train.optim_g.type = Adamm']),
        (two_teachers, ValueError, ['KDLogitsModel distils one teacher, network_t', 'network_t1', 'network_t2']),
    ],
    ids=['missing file', 'not set', 'teacher scale', 'not ignored on resume', 'other arch', 'autocast fp8',
         'optimiser', 'two teachers'])
def test_bad_configuration_fails_at_build_naming_the_option(logits_opt, tmp_path, change, error, words):
    opt = copy.deepcopy(logits_opt)
    change(opt, tmp_path)
    with pytest.raises(error) as raised:  # raised while building, so before any step
        build_model_from(opt, str(tmp_path / 'exp'))
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_teacher_autocast_off_cuda_says_once_that_it_has_no_effect(logits_opt, tmp_path, basicsr_log):
    logits_opt['train']['teacher_autocast'] = 'bf16'
    model = build_model_from(logits_opt, str(tmp_path / 'exp'))
    batch = random_batch()
    model.feed_data(batch)
    for step in (1, 2):
        model.optimize_parameters(step)
    notes = [record for record in basicsr_log.records if 'train.teacher_autocast' in record.getMessage()]
    assert len(notes) == 1 and notes[0].levelname == 'WARNING', [record.getMessage() for record in notes]
    assert 'bf16' in notes[0].getMessage() and 'cpu' in notes[0].getMessage()
    with torch.no_grad():
        plain = model.teachers['t'](batch['lq'])
    assert torch.equal(model.teacher_outputs['t'], plain)  # float32, as without the option


def test_optimiser_is_any_torch_optim_class_and_also_drives_the_helpers(logits_opt, tmp_path):
    opt = hint_opt(logits_opt)
    opt['train']['optim_g'] = {'type': 'AdamW', 'lr': 3e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    assert type(model.optimizer_g) is torch.optim.AdamW
    assert [group['weight_decay'] for group in model.optimizer_g.param_groups] == [1e-4, 1e-4]
    student, helper = (group['params'] for group in model.optimizer_g.param_groups)
    assert {id(p) for p in student} == {id(p) for p in model.net_g.parameters()}
    assert {id(p) for p in helper} == {id(p) for p in model.helpers['reg'].parameters()}


def test_teacher_list_forms(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['network_t1'] = opt['network_t']
    with pytest.raises(ValueError, match='either network_t or network_t1'):
        build_model_from(opt, str(tmp_path / 'exp'))
    multi = {k: v for k, v in opt.items() if k not in ('network_t', 'network_t1')}
    multi.update({f'network_t{i}': opt['network_t'] for i in (10, 2, 1)})
    assert option_teacher_names(multi) == ['t1', 't2', 't10']


def test_taps_fire_when_the_student_is_wrapped_in_ddp(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train']['feature_taps'] = {'network_g': ['body.0']}
    parsed = parsed_options(opt, str(tmp_path / 'exp'))
    parsed['dist'] = True
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0, world_size=1)
    try:
        model = build_model(parsed)
        assert isinstance(model.net_g, DistributedDataParallel)
        batch = random_batch()
        student = model.net_g.module
        with torch.no_grad():
            expected = student.body[0](student.conv_first((batch['lq'] - student.mean) * student.img_range))
        model.feed_data(batch)
        model.optimize_parameters(1)
        tapped = model.taps['g'].outputs()[0]
    finally:
        dist.destroy_process_group()
    assert tapped.requires_grad and torch.allclose(tapped, expected, atol=1e-5)
