"""MTKD's two models: stage 1 trains only the aggregator on the teachers' outputs (in the configured order) and saves
it with the teacher list; stage 2 trains only the student on alpha * L1 to GT + the wavelet loss to the aggregator's
output, with every frozen forward in one no_grad block; the hand-over through files, and the refusal of a teacher list
or aggregator options that differ from the stored ones (a file without a teacher list needs path.agg_teacher_types);
DDP (stage 1) and --auto_resume (stage 2)."""
import copy
import os
import re

import pytest
import torch
from basicsr.data import build_dataset
from basicsr.metrics import calculate_psnr
from basicsr.utils import tensor2img

import kd_archs, kd_losses  # noqa: F401, E401
from conftest import (OPTIONS, assert_optimisers_resumed, build_model_from, differing_tensors, interrupted_and_resumed,
                      load_option, random_batch, run_train, same_tensors, shrink_option, snapshot, training_steps,
                      two_rank_run)


def tiny(option):
    """``options/<option>`` with few blocks in every network (before shrinking, so the random files fit)."""
    opt = load_option(os.path.join(OPTIONS, option))
    opt['network_t1']['num_block'] = 2
    opt['network_t2'].update(num_group=2, num_block=2)
    opt['network_t3'].update(depths=[1, 1], num_heads=[6, 6])
    aggregator = opt['network_g'] if opt['model_type'] == 'KDMTKDAggregationModel' else opt['network_agg']
    aggregator.update(num_blocks=2)
    if opt['model_type'] == 'KDMTKDModel':
        opt['network_g']['num_block'] = 2
    return opt


@pytest.fixture
def stage1_opt(demo_root, tmp_path):
    return shrink_option(tiny('mtkd_stage1_x2.yml'), demo_root, str(tmp_path), 'stage1')


@pytest.fixture
def stage2_opt(demo_root, tmp_path):
    return shrink_option(tiny('mtkd_edsr_x2.yml'), demo_root, str(tmp_path), 'stage2')


def inputs_of(net):
    """Record the first input of every call of ``net`` (and whether grad was enabled) in the returned list."""
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append((args[0].detach().clone(),
                                                                     torch.is_grad_enabled())))
    return calls


def test_stage1_trains_only_the_aggregator_on_the_teachers_outputs_in_order(stage1_opt, tmp_path):
    model = build_model_from(stage1_opt, str(tmp_path / 'exp'))
    assert list(model.teachers) == ['t1', 't2', 't3']
    teachers_before = {name: snapshot(net) for name, net in model.teachers.items()}
    aggregator_before = snapshot(model.net_g)
    calls = inputs_of(model.net_g)
    teacher_calls = {name: inputs_of(net) for name, net in model.teachers.items()}
    batch = random_batch(scale=2)
    model.feed_data(batch)
    model.optimize_parameters(1)
    with torch.no_grad():
        expected = torch.cat([model.teachers[name](batch['lq']) for name in ('t1', 't2', 't3')], dim=1)
    (aggregator_input, grad_enabled), = calls[:1]
    assert aggregator_input.shape == (2, 9, 32, 32) and grad_enabled
    assert torch.allclose(aggregator_input, expected, atol=1e-6)  # EDSR, RCAN, SwinIR channels in that order
    assert all(not grad for name in teacher_calls for _, grad in teacher_calls[name][:1])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for net in model.teachers.values() for p in net.parameters())
    assert set(model.log_dict) == {'l_pix'}
    model.optimize_parameters(2)
    assert all(same_tensors(teachers_before[name], snapshot(net)) for name, net in model.teachers.items())
    assert differing_tensors(aggregator_before, snapshot(model.net_g))

    model.save(0, 2)
    checkpoint = torch.load(tmp_path / 'exp' / 'models' / 'net_g_2.pth', weights_only=True)
    assert not differing_tensors(checkpoint['params'], snapshot(model.net_g))
    assert [t['name'] for t in checkpoint['teachers']] == ['t1', 't2', 't3']
    assert checkpoint['network'] == stage1_opt['network_g']
    for stored, name in zip(checkpoint['teachers'], ('t1', 't2', 't3')):
        assert stored['network'] == stage1_opt[f'network_{name}']
        assert stored['file'] == stage1_opt['path'][f'pretrain_network_{name}']
        assert stored['digest'] == model.frozen_sources[name]['digest']


def test_stage1_validation_scores_each_teacher_on_the_same_images(stage1_opt, tmp_path):
    model = build_model_from(stage1_opt, str(tmp_path / 'exp'))
    dataset_opt = dict(stage1_opt['datasets']['val'], phase='val', scale=2)
    loader = torch.utils.data.DataLoader(build_dataset(dataset_opt), batch_size=1)
    model.nondist_validation(loader, 1, None, False)
    item = next(iter(loader))
    gt = tensor2img([item['gt']])
    crop = stage1_opt['val']['metrics']['psnr']['crop_border']
    for name, teacher in model.teachers.items():
        lq, (h, w) = item['lq'], item['lq'].shape[-2:]
        if 'window_size' in stage1_opt[f'network_{name}']:  # SwinIR: reflect-padded to its window, cropped back
            lq = torch.nn.functional.pad(lq, (0, -w % 8, 0, -h % 8), mode='reflect')
        with torch.no_grad():
            output = teacher(lq)[..., :2 * h, :2 * w]
        expected = calculate_psnr(tensor2img([output]), gt, crop_border=crop, test_y_channel=True)
        assert model.teacher_metric_results[name]['psnr'] == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        model.feed_data(item)
        model.test()
        aggregated = tensor2img([model.output])
    assert model.metric_results['psnr'] == pytest.approx(
        calculate_psnr(aggregated, gt, crop_border=crop, test_y_channel=True), abs=1e-4)


def test_stage2_trains_only_the_student_on_eq_4_with_frozen_forwards_in_one_no_grad_block(stage2_opt, tmp_path):
    model = build_model_from(stage2_opt, str(tmp_path / 'exp'))
    frozen_before = {name: snapshot(net) for name, net in {**model.teachers, **model.frozen}.items()}
    student_before = snapshot(model.net_g)
    agg_calls = inputs_of(model.frozen['agg'])
    grad_modes = []
    for net in model.teachers.values():
        net.register_forward_hook(lambda module, args, out: grad_modes.append(torch.is_grad_enabled()))
    batch = random_batch(scale=2)
    model.feed_data(batch)
    with torch.no_grad():
        student = model.net_g(batch['lq'])
        teacher_outputs = [model.teachers[name](batch['lq']) for name in ('t1', 't2', 't3')]
        target = model.frozen['agg'](torch.cat(teacher_outputs, dim=1))
    agg_calls.clear()
    grad_modes.clear()
    model.optimize_parameters(1)
    (agg_input, agg_grad), = agg_calls
    assert not agg_grad and grad_modes == [False, False, False]
    assert torch.allclose(agg_input, torch.cat(teacher_outputs, dim=1), atol=1e-6)
    assert torch.allclose(model.aggregated, target, atol=1e-6)

    # Eq. 4 by hand: alpha * mean |S - GT| + 1/(3K+1) sum over the 4 Haar bands of mean |DWT(S) - DWT(I_MT)|
    difference = (student - target).double()  # the DWT is linear; 32 x 32: no padding
    a, b, c, d = difference[..., 0::2, 0::2], difference[..., 0::2, 1::2], difference[..., 1::2, 0::2], \
        difference[..., 1::2, 1::2]
    bands = [(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]  # LL, LH, HL, HH
    l_dis = sum(band.abs().mean() for band in bands) / 4
    assert model.log_dict['l_pix'] == pytest.approx(0.1 * (student - batch['gt']).abs().mean().item(), rel=1e-5)
    assert model.log_dict['l_dis'] == pytest.approx(l_dis.item(), rel=1e-4)
    assert set(model.log_dict) == {'l_pix', 'l_dis'}

    assert all(p.grad is not None for p in model.net_g.parameters())
    frozen = [*model.teachers.values(), *model.frozen.values()]
    assert all(p.grad is None and not p.requires_grad for net in frozen for p in net.parameters())
    assert all(not net.training for net in frozen)
    model.optimize_parameters(2)
    for name, net in {**model.teachers, **model.frozen}.items():
        assert same_tensors(frozen_before[name], snapshot(net)), f'network_{name} changed'
    assert differing_tensors(student_before, snapshot(model.net_g))


def test_floor_forwards_are_the_teachers_then_the_aggregator(stage2_opt, tmp_path):
    model = build_model_from(stage2_opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch(scale=2))
    forwards = model.floor_forwards()
    assert [name for name, _ in forwards] == ['t1', 't2', 't3', 'agg']
    assert forwards[-1][1].shape == (2, 9, 32, 32)


def test_stage1_files_hand_over_to_stage2_and_a_permuted_teacher_list_is_refused(stage1_opt, stage2_opt, tmp_path):
    stage1 = stage1_opt
    stage1['val']['val_freq'] = 10**9  # validate once, at the end
    result = run_train(stage1, str(tmp_path))
    assert sorted(training_steps(result)) == [1, 2]
    log = result.stdout + result.stderr
    assert 'the aggregator and each teacher on the same 1 images' in log
    assert all(f'{name} ({kind})' in log for name, kind in (('t1', 'EDSR'), ('t2', 'RCAN'), ('t3', 'SwinIR')))
    aggregator_file = str(tmp_path / 'experiments' / 'stage1' / 'models' / 'net_g_latest.pth')

    stage2 = stage2_opt
    for name in ('t1', 't2', 't3'):  # the teachers stage 1 was trained with, as a user configures them
        stage2['path'][f'pretrain_network_{name}'] = stage1['path'][f'pretrain_network_{name}']
    stage2['path']['pretrain_network_agg'] = aggregator_file
    assert sorted(training_steps(run_train(stage2, str(tmp_path)))) == [1, 2]
    model = build_model_from(stage2, str(tmp_path / 'exp'))
    saved = torch.load(aggregator_file, weights_only=True)
    assert not differing_tensors(snapshot(model.frozen['agg']), saved['params_ema'])

    permuted = copy.deepcopy(stage2)  # SwinIR first, EDSR last: the authors' code feeds such a permutation silently
    for key in ('network_{}', 'pretrain_network_{}'):
        where = permuted['path'] if key.startswith('pretrain') else permuted
        where[key.format('t1')], where[key.format('t3')] = where[key.format('t3')], where[key.format('t1')]
    with pytest.raises(ValueError) as error:
        build_model_from(permuted, str(tmp_path / 'permuted'))
    message = str(error.value)
    assert 'path.pretrain_network_agg' in message and aggregator_file in message
    trained_on, configured = message.split('but this configuration')
    assert trained_on.index("'type': 'EDSR'") < trained_on.index("'type': 'SwinIR'")
    assert configured.index("'type': 'SwinIR'") < configured.index("'type': 'EDSR'")

    unnormalised = copy.deepcopy(stage2)  # the same weight shapes: strict loading alone would accept it
    unnormalised['network_agg']['dct_norm'] = None
    with pytest.raises(ValueError, match="network_agg.dct_norm = None, stage 1: 'ortho'"):
        build_model_from(unnormalised, str(tmp_path / 'unnormalised'))


def test_a_stage2_teacher_with_other_options_or_weights_is_refused(stage2_opt, tmp_path):
    other_weights = copy.deepcopy(stage2_opt)
    state = torch.load(other_weights['path']['pretrain_network_t2'], weights_only=True)
    state['params'] = {key: value + 1 if value.is_floating_point() else value for key, value in state['params'].items()}
    other_weights['path']['pretrain_network_t2'] = str(tmp_path / 'other_t2.pth')
    torch.save(state, other_weights['path']['pretrain_network_t2'])
    with pytest.raises(ValueError, match='was trained on the teachers'):
        build_model_from(other_weights, str(tmp_path / 'a'))


@pytest.mark.parametrize('key, value, trained', [
    ('use_dct', False, True),  # these three change no weight shape
    ('dct_norm', None, 'ortho'),
    ('shifted_windows', False, True),  # unset in the stage-1 options: its default
    ('window_size', 4, 8),  # these two do: named before strict loading fails on the shapes
    ('embed_dim', 24, 12),
])
def test_a_stage2_aggregator_built_otherwise_than_in_stage_1_is_refused(stage2_opt, tmp_path, key, value, trained):
    opt = copy.deepcopy(stage2_opt)
    opt['network_agg'][key] = value
    with pytest.raises(ValueError) as error:
        build_model_from(opt, str(tmp_path / 'exp'))
    message = str(error.value)
    assert f'network_agg.{key} = {value!r}, stage 1: {trained!r}' in message
    assert f'path.pretrain_network_agg = {opt["path"]["pretrain_network_agg"]}' in message


def test_stage2_aggregator_options_are_compared_with_the_constructor_defaults_filled_in(stage2_opt, tmp_path):
    opt = copy.deepcopy(stage2_opt)
    opt['network_agg'].update(shifted_windows=True, drop_path_rate=0.1)  # the defaults stage 1 left unset
    build_model_from(opt, str(tmp_path / 'exp'))


def without(opt, entries, tmp_path):
    """A copy of ``opt`` whose aggregator file lacks the checkpoint ``entries``."""
    opt = copy.deepcopy(opt)
    checkpoint = torch.load(opt['path']['pretrain_network_agg'], weights_only=True)
    for entry in entries:
        del checkpoint[entry]
    opt['path']['pretrain_network_agg'] = str(tmp_path / f'agg_without_{"_".join(entries)}.pth')
    torch.save(checkpoint, opt['path']['pretrain_network_agg'])
    return opt


def logged(log, text):
    return [record.getMessage() for record in log.records if text in record.getMessage()]


def test_an_aggregator_file_without_a_teacher_list_needs_path_agg_teacher_types(stage2_opt, tmp_path, basicsr_log):
    opt = without(stage2_opt, ['teachers', 'network'], tmp_path)  # an aggregator trained elsewhere
    with pytest.raises(ValueError, match=r'carries no teacher list .*path\.agg_teacher_types'):
        build_model_from(opt, str(tmp_path / 'refused'))

    authors_order = copy.deepcopy(opt)
    authors_order['path']['agg_teacher_types'] = ['EDSR', 'SwinIR', 'RCAN']
    with pytest.raises(ValueError) as error:
        build_model_from(authors_order, str(tmp_path / 'permuted'))
    assert re.search(r"path\.agg_teacher_types = \['EDSR', 'SwinIR', 'RCAN'\].*network_t1 \.\. network_t3 are "
                     r"\['EDSR', 'RCAN', 'SwinIR'\]", str(error.value))

    opt['path']['agg_teacher_types'] = ['EDSR', 'RCAN', 'SwinIR']
    basicsr_log.clear()
    model = build_model_from(opt, str(tmp_path / 'accepted'))
    assert len(logged(basicsr_log, 'checked against path.agg_teacher_types')) == 1
    assert len(logged(basicsr_log, 'network_agg cannot be compared')) == 1
    saved = torch.load(opt['path']['pretrain_network_agg'], weights_only=True)['params']
    assert not differing_tensors(snapshot(model.frozen['agg']), saved)


def test_path_agg_teacher_types_is_refused_for_a_file_with_a_teacher_list(stage2_opt, tmp_path):
    opt = copy.deepcopy(stage2_opt)
    opt['path']['agg_teacher_types'] = ['EDSR', 'RCAN', 'SwinIR']
    with pytest.raises(ValueError, match='remove path.agg_teacher_types'):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_a_stage1_file_without_network_options_loads_and_says_they_cannot_be_compared(
        stage2_opt, tmp_path, basicsr_log):
    opt = without(stage2_opt, ['network'], tmp_path)  # written before stage 1 stored them
    build_model_from(opt, str(tmp_path / 'exp'))
    warnings = logged(basicsr_log, 'network_agg cannot be compared')
    assert len(warnings) == 1 and opt['path']['pretrain_network_agg'] in warnings[0]


@pytest.mark.parametrize('change, option', [
    (lambda opt: opt['train'].pop('distill_opt'), 'train.distill_opt'),
    (lambda opt: opt['network_agg'].update(scale=4), 'network_agg.scale'),
    (lambda opt: [opt.pop('network_t3'), opt['path']['ignore_resume_networks'].remove('network_t3')],
     'network_agg.num_teachers'),
], ids=['no distill_opt', 'aggregator scale', 'fewer teachers'])
def test_a_wrong_stage2_configuration_fails_before_the_first_step(stage2_opt, tmp_path, change, option):
    opt = copy.deepcopy(stage2_opt)
    change(opt)
    with pytest.raises(ValueError, match=option):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_stage1_under_test_py_is_refused_saying_what_to_use(stage1_opt, tmp_path):
    """Its test() runs teachers that only training builds: an AttributeError inside validation before the fix."""
    with pytest.raises(ValueError, match=r'KDMTKDAggregationModel cannot run under test.py: .*val:.*KDEvalModel'):
        build_model_from(stage1_opt, str(tmp_path / 'exp'), is_train=False)


def test_stage1_refuses_an_aggregator_for_another_number_of_teachers(stage1_opt, tmp_path):
    opt = copy.deepcopy(stage1_opt)
    opt['network_g']['num_teachers'] = 2
    with pytest.raises(ValueError, match='network_g.num_teachers = 2'):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_stage1_two_cpu_ranks_hold_identical_aggregators(demo_root, tmp_path):
    opt = shrink_option(tiny('mtkd_stage1_x2.yml'), demo_root, str(tmp_path), 'ddp')
    opt['model_type'] = 'KDRecordingMTKDAggregationModel'
    opt.pop('val')
    init, final, _ = two_rank_run(opt, str(tmp_path))
    root = tmp_path / 'experiments' / 'ddp'
    assert not differing_tensors(init[0]['g'], init[1]['g'])
    assert not differing_tensors(final[0]['g'], final[1]['g']), 'the ranks diverged'
    assert differing_tensors(init[1]['g'], final[1]['g']), 'the aggregator did not train'
    saved = torch.load(root / 'models' / 'net_g_latest.pth', weights_only=True)
    assert not differing_tensors(saved['params'], final[1]['g']) and len(saved['teachers']) == 3


def test_stage2_auto_resume_restores_student_optimiser_and_frozen_networks(demo_root, tmp_path):
    opt = shrink_option(tiny('mtkd_edsr_x2.yml'), demo_root, str(tmp_path), 'resume')
    opt['model_type'] = 'KDRecordingMTKDModel'
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert not differing_tensors(resumed['networks']['g'], at_2['g'])
    assert_optimisers_resumed(saved, resumed)
    assert set(saved['kd']['frozen_sources']) == {'t1', 't2', 't3', 'agg'}
    for name in ('t1', 't2', 't3'):
        teacher = torch.load(opt['path'][f'pretrain_network_{name}'], weights_only=True)['params']
        assert not differing_tensors(resumed['teachers'][name], teacher)


def drop_teachers(opt, names):
    for name in names:
        opt.pop(f'network_{name}')
        opt['path'].pop(f'pretrain_network_{name}')
        opt['path'].pop(f'strict_load_{name}')
        opt['path']['ignore_resume_networks'].remove(f'network_{name}')


@pytest.mark.parametrize('ablation', ['v1', 'v2', 'v4'])
def test_tab5_ablations_of_stage1_are_options(demo_root, tmp_path, ablation):
    opt = tiny('mtkd_stage1_x2.yml')
    if ablation == 'v1':  # SwinIR + EDSR
        drop_teachers(opt, ['t2'])
        opt['network_g']['num_teachers'] = 2
    elif ablation == 'v2':  # SwinIR alone
        drop_teachers(opt, ['t1', 't2'])
        opt['network_g']['num_teachers'] = 1
    else:  # no DCT / IDCT
        opt['network_g']['use_dct'] = False
    model = build_model_from(shrink_option(opt, demo_root, str(tmp_path), 'abl'), str(tmp_path / 'exp'))
    model.feed_data(random_batch(scale=2))
    model.optimize_parameters(1)
    expected = {'v1': ['t1', 't3'], 'v2': ['t3'], 'v4': ['t1', 't2', 't3']}[ablation]
    assert list(model.teachers) == expected
    assert all(layer.use_dct == (ablation != 'v4') for layer in model.net_g.modules() if hasattr(layer, 'use_dct'))


def test_tab5_v5_distils_with_plain_l1_to_the_aggregator(stage2_opt, tmp_path):
    opt = copy.deepcopy(stage2_opt)
    opt['train']['distill_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0}
    model = build_model_from(opt, str(tmp_path / 'exp'))
    batch = random_batch(scale=2)
    model.feed_data(batch)
    with torch.no_grad():
        student = model.net_g(batch['lq'])
    model.optimize_parameters(1)
    assert model.log_dict['l_dis'] == pytest.approx((student - model.aggregated).abs().mean().item(), rel=1e-5)
