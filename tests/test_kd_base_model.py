"""KDBaseModel in-process, in the shape of BasicSR's test_sr_model.py: build, feed_data, optimize_parameters, save,
load as a plain SRModel; frozen teachers, feature taps, trainable helpers and configuration errors."""
import copy
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from basicsr.utils.registry import MODEL_REGISTRY

from conftest import build_model_from, save_random_weights
from kd_models.kd_base_model import KDBaseModel


def random_batch(seed=0, scale=2):
    g = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(2, 3, 16, 16, generator=g), 'gt': torch.rand(2, 3, 16 * scale, 16 * scale, generator=g)}


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_teacher_is_frozen_and_losses_are_the_formula(shrunk_logits_opt, tmp_path):
    model = build_model_from(shrunk_logits_opt, str(tmp_path / 'exp'))
    teacher = model.teachers['t']
    teacher_before, student_before = state(teacher), state(model.net_g)
    batch = random_batch()
    with torch.no_grad():
        expected_s, expected_t = model.net_g(batch['lq']), teacher(batch['lq'])
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert model.log_dict['l_pix'] == pytest.approx((expected_s - batch['gt']).abs().mean().item(), rel=1e-5)
    assert model.log_dict['l_kd'] == pytest.approx((expected_s - expected_t).abs().mean().item(), rel=1e-5)
    for _ in range(2):
        model.optimize_parameters(2)
    model.net_g.train()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in model.net_g.state_dict().items())


def test_saved_student_has_no_teacher_and_loads_as_srmodel(shrunk_logits_opt, tmp_path):
    model = build_model_from(shrunk_logits_opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    models = tmp_path / 'exp' / 'models'
    assert sorted(os.listdir(models)) == ['net_g_1.pth']
    saved = torch.load(models / 'net_g_1.pth', weights_only=True)
    assert sorted(saved) == ['params', 'params_ema']
    assert set(saved['params']) == set(model.net_g.state_dict())
    plain = {'name': 'plain', 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 0, 'network_g': shrunk_logits_opt['network_g'],
             'path': {'pretrain_network_g': str(models / 'net_g_1.pth'), 'param_key_g': 'params_ema'}}
    sr_model = build_model_from(plain, str(tmp_path / 'plain'), is_train=False)
    lq = random_batch(1)['lq']
    with torch.no_grad():
        assert torch.equal(sr_model.net_g(lq), model.net_g_ema(lq))


def test_feature_taps_keep_the_configured_modules(shrunk_logits_opt, tmp_path):
    opt = copy.deepcopy(shrunk_logits_opt)
    opt['train']['feature_taps'] = {'network_g': ['body.0', 'conv_after_body'], 'network_t': ['body.0']}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    batch = random_batch()
    model.feed_data(batch)
    model.optimize_parameters(1)
    student, teacher = model.taps['g'].outputs(), model.taps['t'].outputs()
    width = opt['network_g']['num_feat']
    assert [tuple(f.shape) for f in student] == [(2, width, 16, 16)] * 2 and len(teacher) == 1
    with torch.no_grad():  # the teacher's first body block on its own head's output
        net_t = model.teachers['t']
        head = net_t.conv_first((batch['lq'] - net_t.mean) * net_t.img_range)
        assert torch.allclose(teacher[0], net_t.body[0](head), atol=1e-5)


def test_unknown_tap_path_names_the_option_and_close_names(shrunk_logits_opt, tmp_path):
    opt = copy.deepcopy(shrunk_logits_opt)
    opt['train']['feature_taps'] = {'network_g': ['body.9']}
    with pytest.raises(KeyError) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    assert 'train.feature_taps.network_g' in str(error.value) and "'body.0'" in str(error.value)


if 'KDTestHintModel' not in MODEL_REGISTRY:

    @MODEL_REGISTRY.register()
    class KDTestHintModel(KDBaseModel):
        """Pixel loss plus an MSE between regressed student taps and teacher taps (a FitNet in miniature)."""

        def compute_losses(self, current_iter):
            losses = super().compute_losses(current_iter)
            regressed = self.helpers['reg'](self.taps['g'].outputs())
            losses['l_hint'] = sum(F.mse_loss(s, t) for s, t in zip(regressed, self.taps['t'].outputs()))
            return losses


def hint_opt(base):
    opt = copy.deepcopy(base)
    opt['model_type'] = 'KDTestHintModel'
    opt['train'].pop('kd_opt')
    width = opt['network_g']['num_feat']
    opt['network_reg'] = {'type': 'KDConvRegressor', 'in_channels': [width], 'out_channels': [width]}
    opt['train']['feature_taps'] = {'network_g': ['body.0'], 'network_t': ['body.0']}
    return opt


def test_trainable_helper_is_optimised_saved_and_restored(shrunk_logits_opt, tmp_path):
    opt = hint_opt(shrunk_logits_opt)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    regressor = model.helpers['reg']
    before = state(regressor)
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert all(id(p) in optimised for p in regressor.parameters())
    model.feed_data(random_batch())
    for step in range(1, 3):
        model.optimize_parameters(step)
    assert any(not torch.equal(v, before[k]) for k, v in regressor.state_dict().items())
    model.save(0, 2)
    saved = tmp_path / 'exp' / 'models' / 'net_reg_2.pth'
    assert saved.is_file()
    opt['path']['pretrain_network_reg'] = str(saved)
    restored = build_model_from(opt, str(tmp_path / 'exp2')).helpers['reg']
    assert all(torch.equal(v, regressor.state_dict()[k]) for k, v in restored.state_dict().items())


@pytest.mark.parametrize('change, error, words', [
    (lambda o, p: o['path'].update(pretrain_network_t=str(p / 'missing.pth')), FileNotFoundError,
     ['path.pretrain_network_t', 'missing.pth']),
    (lambda o, p: o['path'].update(pretrain_network_t=None), ValueError, ['path.pretrain_network_t is not set']),
    (lambda o, p: o['network_t'].update(upscale=4), ValueError, ['network_t.upscale = 4', 'scale = 2']),
    (lambda o, p: o['path'].update(ignore_resume_networks=[]), ValueError, ['path.ignore_resume_networks']),
    (lambda o, p: o['train'].update(teacher_autocast='fp8'), ValueError, ['train.teacher_autocast']),
    (lambda o, p: o['path'].update(pretrain_network_t=save_random_weights(
        dict(o['network_t'], num_feat=8), str(p / 'other.pth'))), RuntimeError, ['path.pretrain_network_t', 'other.pth']),
])
def test_bad_configuration_fails_before_training_naming_the_option(shrunk_logits_opt, tmp_path, change, error, words):
    opt = copy.deepcopy(shrunk_logits_opt)
    change(opt, tmp_path)
    with pytest.raises(error) as raised:
        build_model_from(opt, str(tmp_path / 'exp'))
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_teacher_list_forms(shrunk_logits_opt, tmp_path):
    opt = copy.deepcopy(shrunk_logits_opt)
    opt['network_t1'] = opt['network_t']
    with pytest.raises(ValueError, match='either network_t or network_t1'):
        build_model_from(opt, str(tmp_path / 'exp'))
    model_cls = MODEL_REGISTRY.get('KDLogitsModel')
    assert issubclass(model_cls, KDBaseModel)
    names = OrderedDict((f'network_t{i}', opt['network_t']) for i in (10, 2, 1))
    multi = {k: v for k, v in opt.items() if k not in ('network_t', 'network_t1')}
    multi.update(names)
    assert KDBaseModel.teacher_names(type('Opt', (), {'opt': multi})()) == ['t1', 't2', 't10']


def test_taps_fire_when_the_student_is_wrapped_in_ddp(shrunk_logits_opt, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from conftest import as_parsed
    from basicsr.models import build_model
    opt = copy.deepcopy(shrunk_logits_opt)
    opt['train']['feature_taps'] = {'network_g': ['body.0']}
    parsed = as_parsed(opt, str(tmp_path / 'exp'))
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
