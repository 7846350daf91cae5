"""KDSKDModel (skd.txt Eq. 6): the terms it assembles, where gradients go, the pixel-range conversions, the Tab. III
ablation switches, configuration errors, the projector's guard against collapse, DDP and --auto_resume."""
import copy
import os

import pytest
import torch
import yaml
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

from conftest import (OPTIONS, assert_networks_resumed, assert_optimisers_resumed, build_model_from, differing_tensors,
                      interrupted_and_resumed, load_option, random_batch, same_tensors, shrink_option, snapshot,
                      two_rank_run)
from datasets_prep import make_test_options
from kd_models.kd_token_maps import tokens_to_map

VGG_LAYERS = ['relu1_1', 'relu2_1']


def tiny(opt):
    """Fewer blocks (tap paths unchanged) and a two-layer VGG, for CPU speed."""
    for key in ('network_g', 'network_t'):
        if 'num_blocks' in opt[key]:
            opt[key]['num_blocks'] = [1, 1, 1, 1]
            if 'num_refinement_blocks' in opt[key]:
                opt[key]['num_refinement_blocks'] = 1
    if 'network_vgg' in opt:
        opt['network_vgg']['layer_names'] = VGG_LAYERS
        opt['train']['contrastive_opt']['layer_weights'] = [0.5, 1.0]
    return opt


def skd_opt(tmp_path, root, option='skd_restormer_derain.yml', **train):
    opt = load_option(os.path.join(OPTIONS, option))
    opt['train'].update(train)
    opt = tiny(opt)
    return shrink_option(opt, root, str(tmp_path), 'skd')


def model_from(opt, tmp_path, name='exp'):
    return build_model_from(opt, str(tmp_path / name))


def without_cl(opt):
    opt = copy.deepcopy(opt)
    opt['train'].pop('contrastive_opt')
    opt.pop('network_vgg')
    opt['path']['ignore_resume_networks'].remove('network_vgg')
    return opt


def test_one_step_trains_the_student_and_the_student_side_of_the_projector_only(tmp_path):
    opt = skd_opt(tmp_path, '/nonexistent')
    model = model_from(opt, tmp_path)
    frozen = {'t': snapshot(model.teachers['t']), 'vgg': snapshot(model.frozen['vgg'])}
    proj = model.get_bare_model(model.helpers['proj'])
    teacher_side = snapshot(proj.teacher_proj)
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_gk', 'l_cl', 'gk_mean', 'gk_saturated'}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters() if p.requires_grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.student_proj.parameters())
    assert all(not p.requires_grad and p.grad is None for p in proj.teacher_proj.parameters())
    for name, net in (('t', model.teachers['t']), ('vgg', model.frozen['vgg'])):
        assert all(p.grad is None and not p.requires_grad for p in net.parameters()) and not net.training
    model.optimize_parameters(2)
    assert same_tensors(snapshot(model.teachers['t']), frozen['t'])
    assert same_tensors(snapshot(model.frozen['vgg']), frozen['vgg'])
    assert same_tensors(snapshot(proj.teacher_proj), teacher_side)
    assert len(model.optimizer_g.param_groups) == 2  # the student, then the projector's student side
    student_side = {id(p) for p in proj.student_proj.parameters()}
    assert {id(p) for p in model.optimizer_g.param_groups[1]['params']} == student_side


def test_the_terms_are_eq5_eq3_and_eq4_of_the_right_features(tmp_path):
    opt = skd_opt(tmp_path, '/nonexistent')
    model = model_from(opt, tmp_path)
    batch = random_batch(seed=3, scale=1, size=16)
    student, teacher = model.get_bare_model(model.net_g), model.teachers['t']
    kept = {}
    paths = opt['train']['feature_taps']['network_g']
    modules_s, modules_t = dict(student.named_modules()), dict(teacher.named_modules())
    hooks = [modules_s[p].register_forward_hook(lambda m, i, o, p=p: kept.__setitem__(('s', p), o.detach().clone()))
             for p in paths]
    hooks += [modules_t[p].register_forward_hook(lambda m, i, o, p=p: kept.__setitem__(('t', p), o.clone()))
              for p in paths]
    proj = copy.deepcopy(model.get_bare_model(model.helpers['proj']))
    vgg = model.frozen['vgg']
    model.feed_data(batch)
    model.optimize_parameters(1)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():  # the step's terms by hand, from the features and output of its (pre-update) forwards
        s_f, t_f = proj([kept[('s', p)] for p in paths], [kept[('t', p)] for p in paths])
        gk_opt = {k: v for k, v in opt['train']['feature_opt'].items() if k != 'type'}
        gk_loss = LOSS_REGISTRY.get('KDGaussianKernelLoss')(**gk_opt)
        gk = gk_loss(s_f, t_f)
        t_out = teacher(batch['lq'])
    assert model.log_dict['l_gk'] == pytest.approx(gk.item(), rel=1e-4)
    for name, value in gk_loss.saturation().items():  # logged, not optimised: the kernel values of this step
        assert model.log_dict[name] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name
    assert 0 < model.log_dict['gk_mean'] < 1
    output = model.output.detach()
    assert model.log_dict['l_pix'] == pytest.approx((output - batch['gt']).abs().mean().item(), rel=1e-5)
    with torch.no_grad():
        anchor, positive, negative = (list(vgg(x).values()) for x in (output, t_out, batch['lq']))
    cl = LOSS_REGISTRY.get('KDImageContrastiveLoss')(temperature=0.1, layer_weights=[0.5, 1.0], loss_weight=0.2)
    assert model.log_dict['l_cl'] == pytest.approx(cl(anchor, positive, negative).item(), rel=1e-4)


def test_vgg_runs_twice_a_step_batched_with_gradient_only_on_the_students_output(tmp_path):
    model = model_from(skd_opt(tmp_path, '/nonexistent'), tmp_path)
    calls = []
    model.frozen['vgg'].register_forward_hook(
        lambda m, i, o: calls.append((i[0].shape[0], i[0].requires_grad, torch.is_grad_enabled())))
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)
    assert calls == [(2, True, True), (4, False, False)]  # S (b) with grad; T + the b negatives in one no_grad call
    floors = model.floor_forwards()
    assert [name for name, _ in floors] == ['t', 'vgg', 'vgg'] and [x.shape[0] for _, x in floors] == [2, 2, 4]


def test_uformer_token_maps_are_reshaped_and_distilled(tmp_path):
    opt = skd_opt(tmp_path, '/nonexistent', option='skd_uformer_denoise.yml')
    model = model_from(opt, tmp_path)
    shapes = []
    proj = model.get_bare_model(model.helpers['proj'])
    proj.register_forward_hook(lambda m, i, o: shapes.extend(tuple(x.shape) for x in i[0]))
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)
    assert all(len(shape) == 4 for shape in shapes) and shapes[0][2:] == (16, 16) and shapes[4][2:] == (1, 1)
    tokens = model.taps['g'].outputs()[0]
    assert tokens.dim() == 3 and torch.equal(tokens_to_map(tokens)[0, :, 2, 3], tokens[0, 2 * 16 + 3])
    assert torch.isfinite(torch.tensor(list(model.log_dict.values()))).all()


def test_pixel_range_minus_one_one_converts_exactly_where_documented(tmp_path):
    opt = skd_opt(tmp_path, '/nonexistent', pixel_range='[-1,1]')
    model = model_from(opt, tmp_path)
    seen = {}
    model.get_bare_model(model.net_g).register_forward_hook(lambda m, i, o: seen.update(g=(i[0], o)))
    model.teachers['t'].register_forward_hook(lambda m, i, o: seen.update(t=i[0]))
    vgg_inputs = []
    model.frozen['vgg'].register_forward_hook(lambda m, i, o: vgg_inputs.append(i[0].detach()))
    batch = random_batch(scale=1, size=16)
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert torch.equal(seen['g'][0], 2 * batch['lq'] - 1) and torch.equal(seen['t'], batch['lq'])
    output = seen['g'][1].detach()
    assert model.log_dict['l_pix'] == pytest.approx((output - (2 * batch['gt'] - 1)).abs().mean().item(), rel=1e-5)
    assert torch.allclose(vgg_inputs[0], (output + 1) / 2)
    assert torch.equal(vgg_inputs[1][2:], batch['lq'])
    model.feed_data(batch)
    model.test()
    with torch.no_grad():
        expected = (model.net_g(2 * batch['lq'] - 1) + 1) / 2
    assert torch.allclose(model.output, expected, atol=1e-6)
    opt['train']['pixel_range'] = '[0,255]'
    with pytest.raises(ValueError, match=r'train.pixel_range = \[0,255\]'):
        model_from(opt, tmp_path, 'bad')


@pytest.mark.parametrize('channel, spatial', [(False, False), (True, False), (False, True), (True, True)],
                         ids=['a', 'b', 'c', 'd'])
def test_tab3_ablations_are_options(tmp_path, channel, spatial):
    opt = without_cl(skd_opt(tmp_path, '/nonexistent'))
    opt['train']['feature_opt'].update(channel_interaction=channel, spatial_interaction=spatial)
    model = model_from(opt, tmp_path)
    assert 'vgg' not in model.frozen and model.cri_contrastive is None
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_gk', 'gk_mean', 'gk_saturated'}
    assert (model.cri_feat.channel_interaction, model.cri_feat.spatial_interaction) == (channel, spatial)


@pytest.mark.parametrize('change, error, match', [
    (lambda o: o['train']['feature_taps']['network_t'].pop(), ValueError, 'feature_taps.network_g and .network_t'),
    (lambda o: o['network_proj']['student_channels'].pop(), ValueError, r'network_proj.student_channels lists 6 taps'),
    (lambda o: o.pop('network_proj'), ValueError, 'needs network_proj'),
    (lambda o: o['train'].pop('feature_opt'), ValueError, 'needs train.feature_opt'),
    (lambda o: o['train'].update(feature_opt={'type': 'KDHintLoss'}), ValueError,
     'train.feature_opt.type = KDHintLoss: KDSKDModel takes KDGaussianKernelLoss'),
    (lambda o: o['train'].update(contrastiv_opt={'type': 'L1Loss'}), ValueError, 'does not read train.contrastiv_opt'),
    (lambda o: o['train'].pop('contrastive_opt'), ValueError, 'network_vgg is set but train.contrastive_opt is not'),
    (lambda o: o.pop('network_vgg'), ValueError, 'needs network_vgg'),
    (lambda o: o['train']['feature_taps']['network_t'].__setitem__(0, 'encoder_levl1'), KeyError,
     'train.feature_taps.network_t: .* no module "encoder_levl1"'),
    (lambda o: o['train']['feature_taps']['network_t'].reverse(), ValueError,
     r"train.feature_taps.network_t = \['decoder_level1', .*in the order it runs .*\['encoder_level1', "),
], ids=['taps', 'proj taps', 'no proj', 'no gk', 'gk of another type', 'unknown loss', 'vgg without cl',
        'cl without vgg', 'bad path', 'taps reversed'])
def test_wrong_configuration_fails_before_the_first_step_naming_the_key(tmp_path, change, error, match):
    opt = skd_opt(tmp_path, '/nonexistent')
    change(opt)
    with pytest.raises(error, match=match):
        model_from(opt, tmp_path)


def test_mismatched_channels_or_levels_fail_before_the_first_step(tmp_path):
    """Checked on the probe forward (a 16 x 16 input), when the model is built."""
    opt = skd_opt(tmp_path, '/nonexistent')
    opt['network_proj']['teacher_channels'][1] += 1
    with pytest.raises(ValueError, match=r'network_proj.teacher_channels\[1\] = 17 but .*encoder_level2'):
        model_from(opt, tmp_path)
    opt = skd_opt(tmp_path, '/nonexistent')
    opt['train']['feature_taps']['network_t'][1] = 'down2_3'  # after encoder_level2: level 3's resolution
    with pytest.raises(ValueError, match=r'network_g encoder_level2 and network_t down2_3 give maps of \(8, 8\) and '
                       r'\(4, 4\): pair blocks of equal resolution'):
        model_from(opt, tmp_path, 'exp2')


@pytest.mark.parametrize('teacher_side', ['trainable', 'frozen'])
def test_the_projector_alone_cannot_zero_the_gk_loss_with_a_frozen_teacher_side(teacher_side):
    """Student and teacher features fixed and unrelated: only the projector trains on L_GK. Both sides trainable, it
    collapses (both projections to 0, L_GK -> 0); with the teacher side frozen, L_GK stays at least at its value for
    the best constant S_f (the mean of T_f), the floor for features that carry no information on T_f."""
    torch.manual_seed(0)
    student, teacher = [torch.randn(2, 6, 6, 6)], [torch.randn(2, 8, 6, 6)]
    proj = ARCH_REGISTRY.get('KDFeatureProjector')(student_channels=[6], teacher_channels=[8], dim=4,
                                                   teacher_side=teacher_side)
    gk = LOSS_REGISTRY.get('KDGaussianKernelLoss')(spatial_chunk=None, loss_weight=1.0)
    optimizer = torch.optim.Adam([p for p in proj.parameters() if p.requires_grad], lr=0.1)
    for _ in range(120):
        loss = gk(*proj(student, teacher))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = gk(*proj(student, teacher)).item()
        t_f = proj(student, teacher)[1][0]
        floor = gk.gk(t_f.mean((0, 2, 3), keepdim=True).expand_as(t_f), t_f).item()
    if teacher_side == 'trainable':
        assert final < 1e-3
    else:
        assert floor > 0.05 and final > 0.5 * floor


def test_two_cpu_ranks_hold_identical_students_and_projectors(restoration_root, tmp_path):
    opt = skd_opt(tmp_path, restoration_root)
    opt['model_type'] = 'KDRecordingSKDModel'
    init, final, _ = two_rank_run(opt, str(tmp_path))
    for name in ('g', 'proj'):
        assert not differing_tensors(init[0][name], init[1][name]), name
        assert not differing_tensors(final[0][name], final[1][name]), f'net_{name}: the ranks diverged'
    changed = differing_tensors(init[1]['proj'], final[1]['proj'])
    assert changed and all(key.startswith('student_proj.') for key in changed)  # the teacher side stays frozen


def test_auto_resume_restores_student_projector_and_optimiser(restoration_root, tmp_path):
    opt = skd_opt(tmp_path, restoration_root)
    opt['model_type'] = 'KDRecordingSKDModel'
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert_networks_resumed(resumed, at_2, ('g', 'proj'))
    assert len(saved['optimizers'][0]['param_groups']) == 2  # the student's group and the projector's
    assert_optimisers_resumed(saved, resumed)
    models = tmp_path / 'experiments' / 'skd' / 'models'
    assert (models / 'net_proj_latest.pth').is_file() and not list(models.glob('net_vgg*'))


def test_results_table_gives_the_tab1_means(tmp_path):
    from basicsr_kd.results_table import add_means, merge_runs, parse_mean
    for name, values in (('skd_a', (30.0, 32.0, 0.9)), ('skd_b', (31.0, 33.0, None))):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'metrics.csv').write_text(
            'dataset,psnr,ssim\n'
            f'Rain1400,{values[0]},0.8\nTest1200,{values[1]},{"" if values[2] is None else values[2]}\nRain100L,1,1\n')
    header, rows = add_means(*merge_runs([str(tmp_path / n / 'metrics.csv') for n in ('skd_a', 'skd_b')]),
                             [parse_mean('Tab.I=Rain1400,Test1200')])
    assert header[-2:] == ['Tab.I psnr', 'Tab.I ssim']
    assert rows[0][-2:] == [31.0, pytest.approx(0.85)] and rows[1][-2:] == [32.0, None]
    with pytest.raises(ValueError, match=r"--mean x: no run has the test set\(s\) \['GoPro', 'HIDE'\]"):
        add_means(header, rows, [parse_mean('x=GoPro,HIDE')])


def validation_metrics(model, dataset_opt):
    """{metric: value} of BasicSR's validation of ``model`` on one dataset (no images saved)."""
    loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False)
    model.validation(loader, current_iter=2, tb_logger=None, save_img=False)
    return dict(model.metric_results)


def test_a_minus_one_one_student_evaluates_through_its_test_option_as_in_its_validation(restoration_root, tmp_path):
    opt = without_cl(skd_opt(tmp_path, restoration_root, pixel_range='[-1,1]'))
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=1, size=16))
    for step in (1, 2):
        model.optimize_parameters(step)
    model.save(-1, -1)
    student = tmp_path / 'exp' / 'models' / 'net_g_latest.pth'
    assert torch.load(student, weights_only=True)['pixel_range'] == '[-1,1]'
    val_set = {**opt['datasets']['val'], 'phase': 'val', 'scale': 1}
    trained = validation_metrics(model, val_set)
    stem = 'skd_restormer_derain'  # its evaluation option file, as make_test_options writes it for these options
    test_opt = yaml.safe_load(make_test_options.render(stem, opt, *make_test_options.task_of(stem)))
    assert test_opt['model_type'] == 'KDEvalModel' and test_opt['val']['pixel_range'] == '[-1,1]'
    test_opt.update(num_gpu=0, datasets={'test_1': opt['datasets']['val']})
    test_opt['path']['pretrain_network_g'] = str(student)
    evaluated = validation_metrics(build_model_from(test_opt, str(tmp_path / 'eval'), is_train=False),
                                   {**val_set, 'phase': 'test'})
    assert evaluated == pytest.approx(trained, abs=1e-9) and set(trained) == {'psnr', 'ssim'}


def test_testing_with_the_training_model_is_refused_pointing_to_kdevalmodel(tmp_path):
    with pytest.raises(ValueError, match=r'KDSKDModel cannot run under test.py: it trains a student; .* KDEvalModel'):
        build_model_from(skd_opt(tmp_path, '/nonexistent'), str(tmp_path / 'exp'), is_train=False)
