"""KDBaseModel's hooks for the methods (extra training state, step hook, frozen copies, frozen encoders fed the
student, per-teacher inputs and views, diagnostics, pixel target) and the silent failures it stops: strict frozen
loading, damaged files, resumed teachers, DataParallel, undeclared networks, the perceptual loss, atomic saves."""
import copy
import os
from collections import OrderedDict

import pytest
import torch
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from torch import nn

from conftest import build_model_from, random_batch, same_tensors, save_random_weights, snapshot
from kd_models.kd_base_model import KDBaseModel, weights_digest

if 'KDTestHookModel' not in MODEL_REGISTRY:  # the registry refuses a second registration of the name

    @MODEL_REGISTRY.register()
    class KDTestHookModel(KDBaseModel):
        """Counts its steps in the training state, keeps a frozen copy of the student, logs a diagnostic."""

        frozen_copies = ('copy', )

        def init_training_settings(self):
            super().init_training_settings()
            self.steps_seen = torch.zeros(())

        def compute_losses(self, current_iter):
            losses = super().compute_losses(current_iter)
            losses['l_kd'] = (self.output - self.teacher_outputs['t']).abs().mean()
            self.diagnostics['share'] = torch.tensor(0.25)
            return losses

        def after_step(self, current_iter):
            self.steps_seen += 1

        def training_state(self):
            return {'steps_seen': self.steps_seen.clone()}

        def load_training_state(self, state):
            self.steps_seen = state['steps_seen']

    @MODEL_REGISTRY.register()
    class KDTestViewModel(KDBaseModel):
        """The teacher sees the LQ input and its horizontal flip in one forward; the pixel target is the teacher."""

        def teacher_views(self, name):
            return [self.lq, self.lq.flip(-1)]

        def pixel_target(self):
            return self.teacher_outputs['t']

    @MODEL_REGISTRY.register()
    class KDTestPerceptualModel(KDBaseModel):
        """The base model with its perceptual key declared to take the stand-in below (BasicSR's PerceptualLoss
        needs VGG weights this machine does not have)."""

        option_keys = {'train': {'perceptual_opt': ('PerceptualLoss', 'KDTestPerceptualLoss')}}

        def compute_losses(self, current_iter):
            losses = super().compute_losses(current_iter)
            losses['l_kd'] = (self.output - self.teacher_outputs['t']).abs().mean()
            return losses

    @LOSS_REGISTRY.register()
    class KDTestPerceptualLoss(nn.Module):
        """BasicSR's PerceptualLoss contract, (perceptual, style), without VGG weights: mean |x - y| and 0."""

        def __init__(self, loss_weight=1.0):
            super().__init__()
            self.loss_weight = loss_weight

        def forward(self, x, y):
            return self.loss_weight * (x - y).abs().mean(), None


def test_step_hook_and_extra_state_are_saved_and_resumed(logits_opt, tmp_path):
    opt = dict(copy.deepcopy(logits_opt), model_type='KDTestHookModel')
    model = build_model_from(opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch())
    for step in range(1, 4):
        model.optimize_parameters(step)
    assert model.steps_seen.item() == 3
    assert model.log_dict['share'] == 0.25  # logged ...
    assert model.log_dict['l_pix'] > 0 and set(model.log_dict) == {'l_pix', 'l_kd', 'share'}
    model.save(0, 3)
    state = torch.load(tmp_path / 'exp' / 'training_states' / '3.state', weights_only=False)
    assert state['kd']['method']['steps_seen'].item() == 3
    assert state['kd']['frozen_sources']['t']['digest'] == weights_digest(model.teachers['t'].state_dict())
    assert sorted(os.listdir(tmp_path / 'exp' / 'training_states')) == ['3.state']  # no temporary file left

    resumed = build_model_from(opt, str(tmp_path / 'exp2'))
    assert resumed.steps_seen.item() == 0
    resumed.resume_training(state)
    assert resumed.steps_seen.item() == 3
    assert same_tensors(resumed.optimizers[0].state_dict()['state'][0], model.optimizers[0].state_dict()['state'][0])


def test_diagnostics_are_not_optimised(logits_opt, tmp_path):
    opt = dict(copy.deepcopy(logits_opt), model_type='KDTestHookModel')
    model = build_model_from(opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch())
    losses = OrderedDict()
    model.compute_losses = lambda step: losses.update(KDTestHookModel.compute_losses(model, step)) or losses
    model.optimize_parameters(1)
    assert list(losses) == ['l_pix', 'l_kd'] and 'share' in model.diagnostics


def test_frozen_copy_has_the_students_weights_and_none_of_its_taps(logits_opt, tmp_path):
    opt = dict(copy.deepcopy(logits_opt), model_type='KDTestHookModel')
    opt['train']['feature_taps'] = {'network_g': ['body.0']}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    frozen = model.frozen['copy']
    assert same_tensors(snapshot(frozen), snapshot(model.net_g))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert not any(module._forward_hooks for module in frozen.modules())
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    tapped = model.taps['g'].outputs()[0].clone()
    model.run_frozen('copy', random_batch(seed=5)['lq'])
    assert torch.equal(model.taps['g'].outputs()[0], tapped)  # the copy's forward did not overwrite the student's tap
    assert not same_tensors(snapshot(frozen), snapshot(model.net_g))  # the student trained, the copy did not


def test_run_frozen_passes_gradient_to_its_input_only_and_keeps_each_calls_taps(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train']['feature_taps'] = {'network_t': ['body.0', 'conv_after_body']}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    x = random_batch()['lq'].requires_grad_()
    y = random_batch(seed=1)['lq']
    out_x, taps_x = model.run_frozen('t', x, grad_to_input=True)
    out_y, taps_y = model.run_frozen('t', y)
    assert out_x.requires_grad and not out_y.requires_grad and not taps_y[0].requires_grad
    assert len(taps_x) == len(taps_y) == 2 and not torch.equal(taps_x[0], taps_y[0])  # each call's own features
    (out_x.sum() + taps_x[1].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teachers['t'].parameters())
    with torch.no_grad():
        model.teachers['t'](x)
        assert torch.allclose(model.taps['t'].outputs()[0], taps_x[0])


def test_teacher_views_run_in_one_forward_and_the_pixel_target_can_be_the_teacher(logits_opt, tmp_path):
    opt = dict(copy.deepcopy(logits_opt), model_type='KDTestViewModel')
    model = build_model_from(opt, str(tmp_path / 'exp'))
    batch_sizes = []
    model.teachers['t'].register_forward_hook(lambda module, inputs, output: batch_sizes.append(len(inputs[0])))
    batch = random_batch()
    model.feed_data(batch)
    with torch.no_grad():
        student = model.net_g(batch['lq'])
        expected = [model.teachers['t'](batch['lq']), model.teachers['t'](batch['lq'].flip(-1))]
    batch_sizes.clear()
    model.optimize_parameters(1)
    assert batch_sizes == [4]  # both views of both samples in one call
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(model.teacher_view_outputs['t'], expected))
    assert model.log_dict['l_pix'] == pytest.approx((student - expected[0]).abs().mean().item(), rel=1e-5)


def test_teacher_inputs_option(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train']['teacher_inputs'] = {'t': 'gt'}
    with pytest.raises(ValueError, match='train.teacher_inputs.t = gt: .*scale 1, not 2'):
        build_model_from(opt, str(tmp_path / 'exp'))
    opt['train']['teacher_inputs'] = {'t2': 'lq'}
    with pytest.raises(ValueError, match=r"train.teacher_inputs.t2: no such teacher \(have \['t'\]\)"):
        build_model_from(opt, str(tmp_path / 'exp'))
    opt['train']['teacher_inputs'] = {'t': 'clean'}
    with pytest.raises(ValueError, match='train.teacher_inputs.t = clean'):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_perceptual_loss_is_a_term_also_without_a_pixel_loss(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['train'].pop('pixel_opt')
    opt['train']['perceptual_opt'] = {'type': 'KDTestPerceptualLoss', 'loss_weight': 0.5}
    opt['model_type'] = 'KDTestPerceptualModel'
    opt['train'].pop('kd_opt', None)
    model = build_model_from(opt, str(tmp_path / 'exp'))
    batch = random_batch()
    model.feed_data(batch)
    with torch.no_grad():
        student = model.net_g(batch['lq'])
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_percep', 'l_kd'}
    assert model.log_dict['l_percep'] == pytest.approx(0.5 * (student - batch['gt']).abs().mean().item(), rel=1e-5)


def test_data_parallel_is_refused_with_the_torchrun_command(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['num_gpu'] = 2  # BasicSR wraps the student in DataParallel (on this CPU machine too) without a launcher
    with pytest.raises(ValueError) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    assert 'DataParallel' in str(error.value) and 'torchrun --nproc_per_node=2 train.py' in str(error.value)


def test_an_undeclared_network_is_refused_naming_it_and_the_expected_ones(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    opt['network_regg'] = {'type': 'KDConvRegressor', 'in_channels': [16], 'out_channels': [16]}
    with pytest.raises(ValueError) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    assert "KDLogitsModel does not use ['network_regg']" in str(error.value)
    opt['model_type'] = 'KDFeatureModel'
    opt['train'].update(feature_taps={'network_g': ['body.0'], 'network_t': ['body.0']},
                        feature_opt={'type': 'KDHintLoss'})
    with pytest.raises(ValueError, match=r"KDFeatureModel does not use \['network_regg'\].*\['network_reg'\]"):
        build_model_from(opt, str(tmp_path / 'exp'))


# ----------------------------------------------------------------------------------------- frozen weight files
def teacher_file(opt, tmp_path, content):
    """Write ``content`` (a function of the teacher's random state dict) as the teacher file."""
    path = save_random_weights(opt['network_t'], str(tmp_path / 'random.pth'))
    state = torch.load(path, weights_only=True)['params']
    torch.save(content(state), tmp_path / 'teacher.pth')
    opt['path']['pretrain_network_t'] = str(tmp_path / 'teacher.pth')
    return state


def shifted(state, delta):
    return OrderedDict((k, v + delta if v.is_floating_point() else v) for k, v in state.items())


@pytest.mark.parametrize('content, words', [
    (lambda s: {'params': OrderedDict(list(s.items())[1:])}, ['Missing key(s)', 'conv_first']),
    (lambda s: {'params': OrderedDict(s, extra=torch.zeros(1))}, ['Unexpected key(s)', '"extra"']),
    (lambda s: {'weights': s}, ['no "params" in it', "['weights']"]),
], ids=['missing key', 'unexpected key', 'no params'])
def test_teacher_loading_is_strict(logits_opt, tmp_path, content, words):
    opt = copy.deepcopy(logits_opt)
    teacher_file(opt, tmp_path, content)
    with pytest.raises((RuntimeError, KeyError)) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    message = error.value.args[0]
    assert 'path.pretrain_network_t' in message and all(word in message for word in words), message


def test_teacher_prefers_params_ema_and_params_is_exact(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    state = teacher_file(opt, tmp_path, lambda s: {'params': s, 'params_ema': shifted(s, 1.0)})
    for param_key in ('params_ema', None):  # set, or by default
        opt['path']['param_key_t'] = param_key
        model = build_model_from({**opt, 'path': {k: v for k, v in opt['path'].items() if v is not None}},
                                 str(tmp_path / 'exp'))
        assert same_tensors(snapshot(model.teachers['t']), shifted(state, 1.0))
    opt['path']['param_key_t'] = 'params'
    assert same_tensors(snapshot(build_model_from(opt, str(tmp_path / 'exp2')).teachers['t']), state)
    teacher_file(opt, tmp_path, lambda s: {'params_ema': s})
    with pytest.raises(KeyError, match='no "params" in it'):  # params is exact: never the EMA weights instead
        build_model_from(opt, str(tmp_path / 'exp3'))
    opt['path']['param_key_t'] = 'params_ema'
    teacher_file(opt, tmp_path, lambda s: {'params': s})  # no EMA weights in the file (the official teachers)
    model = build_model_from(opt, str(tmp_path / 'exp4'))
    assert same_tensors(snapshot(model.teachers['t']), state) and model.frozen_sources['t']['param_key'] == 'params'


def test_teacher_file_with_module_prefix_loads(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    state = teacher_file(opt, tmp_path, lambda s: {'params': OrderedDict((f'module.{k}', v) for k, v in s.items())})
    assert same_tensors(snapshot(build_model_from(opt, str(tmp_path / 'exp')).teachers['t']), state)


def test_damaged_teacher_file_names_the_option_and_the_damage(logits_opt, tmp_path):
    opt = copy.deepcopy(logits_opt)
    teacher_file(opt, tmp_path, lambda s: {'params': s})
    data = (tmp_path / 'teacher.pth').read_bytes()
    (tmp_path / 'teacher.pth').write_bytes(data[:len(data) // 3])  # an interrupted download
    with pytest.raises(ValueError) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    message = str(error.value)
    assert f'path.pretrain_network_t = {tmp_path / "teacher.pth"} is damaged' in message
    assert 'truncated or corrupt' in message and 'weights_only' not in message


def test_resume_restores_the_teachers_starting_weights(logits_opt, tmp_path):
    """What BasicSR's check_resume does to a resumed run (param_key_t: params_ema -> params), also in a fork whose
    train.py lacks our fix 8: the model reloads the key the run started with."""
    opt = copy.deepcopy(logits_opt)
    state = teacher_file(opt, tmp_path, lambda s: {'params': s, 'params_ema': shifted(s, 1.0)})
    opt['path']['param_key_t'] = 'params_ema'
    started = build_model_from(opt, str(tmp_path / 'exp'))
    started.save(0, 2)
    training_state = torch.load(tmp_path / 'exp' / 'training_states' / '2.state', weights_only=False)
    opt['path']['param_key_t'] = 'params'  # as check_resume leaves it
    resumed = build_model_from(opt, str(tmp_path / 'exp2'))
    assert same_tensors(snapshot(resumed.teachers['t']), state)  # the raw weights, before resume_training
    resumed.resume_training(training_state)
    assert same_tensors(snapshot(resumed.teachers['t']), shifted(state, 1.0))

    teacher_file(opt, tmp_path, lambda s: {'params': shifted(s, 2.0)})  # the file was replaced since the start
    opt['path'].pop('param_key_t')
    with pytest.raises(ValueError, match='now holds other weights than the ones this run started with'):
        build_model_from(opt, str(tmp_path / 'exp3')).resume_training(training_state)


# ----------------------------------------------------------------------------------------- atomic saves
def test_a_save_killed_mid_write_leaves_the_previous_files_intact(logits_opt, tmp_path, monkeypatch):
    model = build_model_from(copy.deepcopy(logits_opt), str(tmp_path / 'exp'))
    model.save(0, 2)
    models, states = tmp_path / 'exp' / 'models', tmp_path / 'exp' / 'training_states'
    before = {path: path.read_bytes() for path in (models / 'net_g_2.pth', states / '2.state')}
    real_save = torch.save

    def killed(obj, path, *args, **kwargs):  # writes half of the file, then the process is killed
        real_save(obj, path, *args, **kwargs)
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', killed)
    for save in (lambda: model.save_network(model.net_g, 'net_g', 2), lambda: model.save_training_state(0, 2)):
        with pytest.raises(KeyboardInterrupt):
            save()
    assert all(path.read_bytes() == data for path, data in before.items())
