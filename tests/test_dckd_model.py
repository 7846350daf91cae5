"""KDDCKDModel (DCKD, dckd.txt Eq. 4-10) and the label-consistency option of the single-teacher models (DCKD*):
the losses of a step against a direct per-image computation, the frozen forwards (one VQGAN pass with gradient,
positive and negatives batched), the gradients, the history model's schedule and EMA rule, wrong configurations,
and, under train.py, DDP and --auto_resume with the history model compared tensor by tensor.

The loss classes (Eq. 5, Eq. 8-9), the degradation module and the label-consistency transforms have their own tests
(test_dckd_losses.py, test_dckd_degradations.py)."""
import copy
import os

import pytest
import torch
from torch.nn import functional as F

import kd_archs, kd_losses  # noqa: E401, F401
from conftest import (OPTIONS, RECORDING_TRAIN, build_model_from, differing_tensors, load_option, random_batch,
                      run_train, same_tensors, save_random_weights, snapshot, two_rank_run)
from kd_models.kd_dckd_model import HistorySchedule

TINY_VQGAN = {'type': 'KDVQGANEncoder', 'embed_dim': 8, 'n_embed': 16, 'ddconfig': {'ch': 32}}
N = 3  # negatives per sample in these tests


@pytest.fixture
def dckd_opt(logits_opt, tmp_path):
    """The tiny EDSR x2 pair of ``logits_opt`` with options/dckd_swinir_x2.yml's DCKD keys, a random tiny VQGAN
    (32 channels at the first level, all five levels and taps), N = 3, history updated every iteration."""
    opt = copy.deepcopy(logits_opt)
    dckd = load_option(os.path.join(OPTIONS, 'dckd_swinir_x2.yml'))
    opt['model_type'] = 'KDDCKDModel'
    opt['network_vqgan'] = dict(TINY_VQGAN)
    opt['path'].update(pretrain_network_vqgan=save_random_weights(TINY_VQGAN, str(tmp_path / 'vqgan.pth')),
                       param_key_vqgan='params', ignore_resume_networks=['network_t', 'network_vqgan'])
    for key in ('kd_opt', 'dcl_opt', 'ce_opt', 'negatives', 'history'):
        opt['train'][key] = copy.deepcopy(dckd['train'][key])
    opt['train']['negatives']['num_negatives'] = N
    opt['train']['history']['update_schedule'] = [[1000, 1]]
    opt['train']['ema_decay'] = 0.9
    return opt


def record_calls(net, calls):
    """Append (batch size, grad enabled) of every forward of ``net`` to ``calls``."""
    return net.register_forward_hook(lambda m, inputs, out: calls.append((len(inputs[0]), torch.is_grad_enabled())))


# ------------------------------------------------------------------------------------------------- one step
def direct_losses(model, lq, degraded):
    """Eq. 5 and Eq. 8-9 of one step, computed image by image: each image through the VQGAN on its own, the ratio of
    mean absolute differences per layer with explicit loops over negatives, the codebook distributions from explicit
    differences to every code, the cross-entropy summed over codes and averaged over positions."""
    vqgan, dcl, ce = model.vqgan, model.cri_dcl, model.cri_ce
    with torch.no_grad():
        student = model.net_g(lq)
        teacher = model.teachers['t'](lq)
        negatives = [model.frozen['his'](degraded[j]) for j in range(len(degraded))]

        def encode(images):  # one image per forward
            outs = [vqgan(image[None], return_taps=True) for image in images]
            return torch.cat([z for z, _ in outs]), [torch.cat(layer) for layer in zip(*[taps for _, taps in outs])]

        z_s, f_s = encode(student)
        z_t, f_t = encode(teacher)
        f_n = [encode(negative)[1] for negative in negatives]
        l_dcl = 0
        for i, weight in enumerate(dcl.layer_weights):
            denominator = sum((f_s[i] - f_n[j][i]).abs().mean() for j in range(len(negatives)))
            l_dcl += weight * (f_s[i] - f_t[i]).abs().mean() / (denominator + dcl.eps)
        codes = vqgan.quantize.embedding.weight
        total, count = 0, 0
        for b in range(len(lq)):
            for y in range(z_s.shape[2]):
                for x in range(z_s.shape[3]):
                    d_s = ((z_s[b, :, y, x] - codes)**2).sum(1)
                    d_t = ((z_t[b, :, y, x] - codes)**2).sum(1)
                    total -= (F.softmax(-d_t / ce.temperature, 0) * F.log_softmax(-d_s / ce.temperature, 0)).sum()
                    count += 1
    return dcl.loss_weight * l_dcl, ce.loss_weight * total / count


def test_step_losses_match_a_direct_per_image_computation(dckd_opt, tmp_path):
    dckd_opt['train']['ce_opt']['temperature'] = 0.5
    model = build_model_from(dckd_opt, str(tmp_path / 'exp'))
    batch = random_batch()
    torch.manual_seed(3)
    degraded = model.degradations(batch['lq'])
    expected_dcl, expected_ce = direct_losses(model, batch['lq'], degraded)
    model.feed_data(batch)
    torch.manual_seed(3)  # the step draws the same degradations
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_dcl', 'l_ce', 'history_age'}
    assert model.log_dict['l_dcl'] == pytest.approx(expected_dcl.item(), rel=1e-4)
    assert model.log_dict['l_ce'] == pytest.approx(expected_ce.item(), rel=1e-4)


def test_gradients_reach_the_student_only_and_the_frozen_forwards_are_batched(dckd_opt, tmp_path):
    dckd_opt['train']['history']['update_schedule'] = [[1000, 1000]]  # the history model must stay as it was
    dckd_opt['train']['total_iter'] = 1000
    model = build_model_from(dckd_opt, str(tmp_path / 'exp'))
    frozen = {'t': model.teachers['t'], 'vqgan': model.vqgan, 'his': model.frozen['his']}
    before = {name: snapshot(net) for name, net in frozen.items()}
    calls = {name: [] for name in frozen}
    for name, net in frozen.items():
        record_calls(net, calls[name])
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    assert calls == {'t': [(2, False)], 'his': [(N * 2, False)], 'vqgan': [((N + 1) * 2, False), (2, True)]}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters())
    for name, net in frozen.items():
        assert not net.training and all(not p.requires_grad and p.grad is None for p in net.parameters()), name
    model.optimize_parameters(2)
    for name, net in frozen.items():
        assert same_tensors(snapshot(net), before[name]), f'{name} changed'


@pytest.mark.parametrize('drop, terms, vqgan_calls, history_calls', [
    ('ce_opt', {'l_pix', 'l_kd', 'l_dcl', 'history_age'}, [((N + 1) * 2, False), (2, True)], [(N * 2, False)]),
    ('dcl_opt', {'l_pix', 'l_kd', 'l_ce'}, [(2, False), (2, True)], []),
], ids=['DCR only', 'DMM only'])
def test_ablations_of_tab5_switch_off_a_term_and_its_forwards(dckd_opt, tmp_path, drop, terms, vqgan_calls,
                                                              history_calls):
    dckd_opt['train'].pop(drop)
    if drop == 'dcl_opt':
        dckd_opt['train'].pop('negatives')
    model = build_model_from(dckd_opt, str(tmp_path / 'exp'))
    calls = {'vqgan': [], 'his': []}
    record_calls(model.vqgan, calls['vqgan'])
    record_calls(model.frozen['his'], calls['his'])
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == terms
    assert calls == {'vqgan': vqgan_calls, 'his': history_calls}


def test_floor_forwards_are_the_frozen_forwards_of_a_step(dckd_opt, tmp_path):
    dckd_opt['train']['label_consistency_opt'] = {'type': 'L1Loss', 'prob': 0.5}
    model = build_model_from(dckd_opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    shapes = [(name, tuple(x.shape)) for name, x in model.floor_forwards()]
    assert shapes == [('t', (4, 3, 16, 16)), ('his', (N * 2, 3, 16, 16)), ('vqgan', ((N + 1) * 2, 3, 32, 32)),
                      ('vqgan', (2, 3, 32, 32))]


# ------------------------------------------------------------------------------------------------- history model
def test_history_schedule_holds_its_last_step_forever():
    schedule = HistorySchedule([[100000, 1000], [200000, 2000], [300000, 3000]], total_iter=10**7)
    assert [schedule.step(t) for t in (1, 100000, 100001, 200000, 200001, 300000, 300001, 10**7)] == \
        [1000, 1000, 2000, 2000, 3000, 3000, 3000, 3000]
    assert schedule.updates_at(1000) and not schedule.updates_at(101000) and schedule.updates_at(102000)
    assert schedule.updates_at(303000) and not schedule.updates_at(302000)  # past the list: s = 3000 holds


@pytest.mark.parametrize('source', ['ema', 'student'])
def test_history_changes_only_at_scheduled_iterations_by_the_ema_rule_from_its_source(dckd_opt, tmp_path, source):
    dckd_opt['train']['history'].update(source=source, alpha=0.25, update_schedule=[[2, 1], [4, 2]])
    model = build_model_from(dckd_opt, str(tmp_path / 'exp'))
    history = model.frozen['his']
    assert same_tensors(snapshot(history), snapshot(model.net_g))  # iteration 0: the source (EMA = student)
    model.feed_data(random_batch())
    updated, ages = [], []
    for step in range(1, 8):
        old = snapshot(history)
        model.optimize_parameters(step)
        ages.append(model.log_dict['history_age'])
        new = snapshot(history)
        if same_tensors(old, new):
            continue
        updated.append(step)
        src = dict((model.net_g_ema if source == 'ema' else model.net_g).named_parameters())
        other = dict((model.net_g if source == 'ema' else model.net_g_ema).named_parameters())
        assert not same_tensors({k: v.detach() for k, v in src.items()}, {k: v.detach() for k, v in other.items()})
        for name, param in history.named_parameters():
            expected = 0.25 * old[name] + 0.75 * src[name].detach()
            assert torch.allclose(param, expected, rtol=0, atol=1e-6), name
            assert not torch.allclose(param, 0.25 * old[name] + 0.75 * other[name].detach(), rtol=0, atol=1e-6)
        for name, buffer in history.named_buffers():
            assert torch.equal(buffer, dict(model.net_g.named_buffers())[name])
    assert updated == [1, 2, 4, 6]  # s = 1 up to 2, s = 2 up to 4 and, the last step holding, after
    # the age of the history model each step's negatives came from: iterations since the update before that step
    assert ages == [1, 1, 1, 2, 1, 2, 1]


def test_history_and_its_last_update_are_in_the_training_state_and_restored(dckd_opt, tmp_path):
    dckd_opt['train']['history']['update_schedule'] = [[1000, 2]]  # updated after iteration 2 only
    model = build_model_from(dckd_opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch())
    for step in (1, 2, 3):
        model.optimize_parameters(step)
    assert model.log_dict['history_age'] == 1
    model.save(0, 3)
    state = torch.load(tmp_path / 'exp' / 'training_states' / '3.state', weights_only=False)
    assert same_tensors(state['kd']['method']['history'], snapshot(model.frozen['his']))
    assert state['kd']['method']['history_updated_at'] == 2
    resumed = build_model_from(dckd_opt, str(tmp_path / 'exp2'))
    assert differing_tensors(snapshot(resumed.frozen['his']), snapshot(model.frozen['his']))
    resumed.resume_training(state)
    assert same_tensors(snapshot(resumed.frozen['his']), snapshot(model.frozen['his']))
    resumed.feed_data(random_batch())
    resumed.optimize_parameters(4)
    assert resumed.log_dict['history_age'] == 2  # updated after iteration 2, as before the interruption


@pytest.mark.parametrize('option', sorted(name for name in os.listdir(OPTIONS) if name.startswith('dckd_')))
def test_the_option_files_schedules_update_the_history_model_in_their_runs(option):
    train = load_option(os.path.join(OPTIONS, option))['train']
    schedule = HistorySchedule(train['history']['update_schedule'], int(train['total_iter']))
    assert schedule.updates_at(1000) and schedule.step(int(train['total_iter'])) in (2000, 3000)


# ------------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize('change, error, words', [
    (lambda o: o['train'].update(ema_decay=0), ValueError, ['train.history.source = ema', 'train.ema_decay = 0']),
    (lambda o: o['train']['history'].update(sorce='ema'), ValueError, ['train.history.sorce: unknown option']),
    (lambda o: o['train']['history'].update(source='teacher'), ValueError, ['train.history.source']),
    (lambda o: o['train']['history'].update(alpha=1.5), ValueError, ['train.history.alpha']),
    (lambda o: o['train']['history'].update(alpha=0), ValueError, ['train.history.alpha = 0', '(0, 1)']),
    (lambda o: o['train']['history'].update(alpha=1), ValueError, ['train.history.alpha = 1', '(0, 1)']),
    (lambda o: o['train']['history'].update(update_schedule=[[200, 10], [100, 20]]), ValueError,
     ['train.history.update_schedule']),
    (lambda o: (o['train'].update(total_iter=250000), o['train']['history'].update(update_schedule=[[1000, 100000]])),
     ValueError, ['train.history.update_schedule = [[1000, 100000]]', 'swapped']),
    (lambda o: o['train']['history'].update(update_schedule=[[1000, 5]]), ValueError,
     ['train.history.update_schedule', 'iterations 1..2', 'train.total_iter = 2', 'never be updated']),
    (lambda o: (o['train'].update(total_iter=20),
                o['train']['history'].update(update_schedule=[[10, 1], [12, 5], [20, 1]])),
     ValueError, ['train.history.update_schedule', 'row [12, 5] holds for iterations 11..12', 'not be updated']),
    (lambda o: (o['train'].update(total_iter=20), o['train']['history'].update(update_schedule=[[10, 1], [100, 50]])),
     ValueError, ['train.history.update_schedule', 'row [100, 50] holds for iterations 11..20']),
    (lambda o: [o['train'].pop(k) for k in ('dcl_opt', 'ce_opt')], ValueError, ['train.dcl_opt', 'train.ce_opt']),
    (lambda o: o['train'].pop('dcl_opt'), ValueError, ['train.negatives', 'train.dcl_opt']),
    (lambda o: o['train']['dcl_opt'].update(layer_weights=[1, 1, 1, 1]), ValueError,
     ['train.dcl_opt.layer_weights', '4 weights', '5 feature taps']),
    (lambda o: o['train']['negatives'].update(type='noise'), ValueError, ['train.negatives.type']),
    (lambda o: o['train']['negatives'].update(num_negatives=0), ValueError, ['train.negatives.num_negatives']),
    (lambda o: o.pop('network_vqgan'), ValueError, ['network_vqgan']),
    (lambda o: o['path'].update(pretrain_network_vqgan='missing.pth'), FileNotFoundError,
     ['path.pretrain_network_vqgan', 'missing.pth']),
    (lambda o: o['train'].update(label_consistency_opt={'type': 'L1Loss', 'prob': 2}), ValueError,
     ['train.label_consistency_opt.prob']),
    (lambda o: o['train'].update(label_consistency_opt={'type': 'L1Loss', 'probability': 0.5}), ValueError,
     ['train.label_consistency_opt', 'probability']),
], ids=['ema without ema_decay', 'unknown history key', 'bad source', 'bad alpha', 'alpha 0', 'alpha 1',
        'bad schedule', 'swapped schedule', 'schedule past the run', 'row longer than it holds',
        'last row longer than the rest of the run', 'no term',
        'negatives without dcl', 'layer weights', 'unknown negatives key', 'no negatives', 'no vqgan',
        'missing vqgan file', 'label consistency prob', 'label consistency key'])
def test_wrong_configurations_fail_before_the_first_step_naming_the_key(dckd_opt, tmp_path, change, error, words):
    change(dckd_opt)
    with pytest.raises(error) as raised:
        build_model_from(dckd_opt, str(tmp_path / 'exp'))
    assert all(word in str(raised.value) for word in words), str(raised.value)


# ------------------------------------------------------------------------------------------------- DCKD*
def transform_one(image, ops, undo=False):
    """The label-consistency ops on one (C, H, W) image, written out one by one."""
    steps = [(ops[0], lambda x: 1 - x), (ops[1], lambda x: torch.flip(x, [1])), (ops[2], lambda x: torch.flip(x, [2])),
             (ops[3], lambda x: x.permute(0, 2, 1))]
    for on, function in (reversed(steps) if undo else steps):
        if on:
            image = function(image)
    return image


@pytest.mark.parametrize('model_type', ['KDLogitsModel', 'KDDCKDModel'])
def test_label_consistency_is_l1_to_the_teachers_undone_output_of_the_transformed_input(
        dckd_opt, logits_opt, tmp_path, model_type):
    opt = copy.deepcopy(dckd_opt if model_type == 'KDDCKDModel' else logits_opt)
    opt['train']['label_consistency_opt'] = {'type': 'L1Loss', 'loss_weight': 0.5, 'prob': 0.5}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    calls = []
    record_calls(model.teachers['t'], calls)
    batch = random_batch(batch=4)
    with torch.no_grad():
        student = model.net_g(batch['lq'])
        teacher = model.teachers['t'](batch['lq'])
    calls.clear()
    model.feed_data(batch)
    torch.manual_seed(1)
    model.optimize_parameters(1)
    assert calls == [(8, False)]  # clean and transformed inputs in one teacher forward
    ops = model.lc_ops.tolist()
    assert any(any(row) for row in ops) and not all(all(row) for row in ops)
    with torch.no_grad():
        target = torch.stack([
            transform_one(model.teachers['t'](transform_one(x, o)[None])[0], o, undo=True)
            for x, o in zip(batch['lq'], ops)
        ])
    assert model.log_dict['l_lc'] == pytest.approx(0.5 * (student - target).abs().mean().item(), rel=1e-5)
    assert model.log_dict['l_kd'] == pytest.approx((student - teacher).abs().mean().item(), rel=1e-5)


def test_feature_models_keep_the_clean_views_taps_with_label_consistency(logits_opt, tmp_path):
    logits_opt.update(model_type='KDFeatureModel')
    logits_opt['train'].update(feature_taps={'network_g': ['body.0'], 'network_t': ['body.0']},
                               feature_opt={'type': 'KDHintLoss'},
                               label_consistency_opt={'type': 'L1Loss'})
    model = build_model_from(logits_opt, str(tmp_path / 'exp'))
    batch = random_batch()
    with torch.no_grad():
        model.teachers['t'](batch['lq'])
        clean = model.taps['t'].outputs()[0].clone()
        model.net_g(batch['lq'])
        student = model.taps['g'].outputs()[0].clone()
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_lc', 'l_feat'}
    assert model.log_dict['l_feat'] == pytest.approx(F.mse_loss(student, clean).item(), rel=1e-4)


# ------------------------------------------------------------------------------------------------- train.py
HISTORY_RECORDING = '''import os, sys
sys.path.insert(0, {tests!r})
import recording_train
from basicsr.utils.registry import MODEL_REGISTRY


class KDRecordingHistoryDCKDModel(MODEL_REGISTRY.get('KDRecordingDCKDModel')):
    """Also records the history model of each rank."""

    def networks(self):
        return {{**super().networks(), 'his': self.frozen['his'].state_dict()}}


MODEL_REGISTRY.register(KDRecordingHistoryDCKDModel)
recording_train.cli.train()
'''


def recording_script(tmp_path):
    path = tmp_path / 'recording_history.py'
    path.write_text(HISTORY_RECORDING.format(tests=os.path.dirname(RECORDING_TRAIN)))
    return str(path)


def train_opt(dckd_opt, name):
    opt = copy.deepcopy(dckd_opt)
    opt.update(name=name, model_type='KDRecordingHistoryDCKDModel')
    opt.pop('val', None)
    return opt


def test_two_cpu_ranks_hold_identical_students_and_history_models(dckd_opt, tmp_path):
    opt = train_opt(dckd_opt, 'ddp')
    init, final, _ = two_rank_run(opt, str(tmp_path), script=recording_script(tmp_path))
    for name in ('g', 'his'):
        assert not differing_tensors(final[0][name], final[1][name]), f'{name}: the ranks diverged'
        assert differing_tensors(init[1][name], final[1][name]), f'{name} did not change'


def test_auto_resume_restores_the_history_model_of_the_uninterrupted_run(dckd_opt, tmp_path):
    opt = train_opt(dckd_opt, 'resume')
    opt['logger']['save_checkpoint_freq'] = 2
    script = recording_script(tmp_path)
    run_train(opt, str(tmp_path), script=script)  # uninterrupted up to iteration 2, where it saves
    longer = copy.deepcopy(opt)
    longer['train']['total_iter'] = 3
    longer['logger']['save_checkpoint_freq'] = 1
    result = run_train(longer, str(tmp_path), '--auto_resume', script=script)
    assert 'Resuming training from epoch: 0, iter: 2.' in result.stdout + result.stderr

    root = tmp_path / 'experiments' / 'resume'
    at_2 = torch.load(root / 'iter2_rank0.pth', weights_only=True)
    resumed = torch.load(root / 'resumed_rank0.pth', weights_only=False)['networks']
    assert not differing_tensors(resumed['his'], at_2['his']), 'the resumed history model is not the one at 2'
    assert differing_tensors(resumed['his'], resumed['g'])  # not a fresh copy of the student
    # iteration 3 updates it from there: alpha * history(2) + (1 - alpha) * EMA student(3)
    history_3 = torch.load(root / 'training_states' / '3.state', weights_only=False)['kd']['method']['history']
    ema_3 = torch.load(root / 'models' / 'net_g_3.pth', weights_only=True)['params_ema']
    alpha = opt['train']['history']['alpha']
    parameters = [name for name, _ in build_model_from(dckd_opt, str(tmp_path / 'probe')).net_g.named_parameters()]
    assert differing_tensors(history_3, at_2['his'])
    for key in parameters:
        expected = alpha * at_2['his'][key] + (1 - alpha) * ema_3[key]
        assert torch.allclose(history_3[key], expected, rtol=0, atol=1e-6), key
