"""KDSLKDModel (slkd.txt Eq. 6): two teachers on the degraded and the clean image, the scale conversion modules, the
option files of Tab. I-II, the ablations of Tab. IV, DDP and resume; Uformer's token maps; Rain1400's preparation."""
import copy
import math
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.utils.registry import LOSS_REGISTRY

from conftest import (OPTIONS, assert_networks_resumed, assert_optimisers_resumed, build_model_from, differing_tensors,
                      interrupted_and_resumed, load_option, random_batch, same_tensors, save_random_weights,
                      shrink_network, shrink_option, snapshot, two_rank_run)
from datasets_prep import prepare_rain13k
from kd_models.kd_token_maps import tokens_to_map, tokens_to_maps

ARCHS = ('restormer', 'uformer', 'drsformer')
TASKS = ('derain', 'deblur', 'denoise')
ENCODER = ['encoder_level1', 'encoder_level2', 'encoder_level3']
DECODER = ['decoder_level3', 'decoder_level2', 'decoder_level1']
PATCH = 16


def restormer_opt(root, workdir, name='slkd'):
    """options/slkd_restormer_derain.yml shrunk, with one block per level and a teacher twice as wide as the
    student (dim 16 vs 8), so that the SCMs change channels; teacher B loads teacher A's file, as the file says."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'slkd_restormer_derain.yml')), root, workdir, name)
    for key, dim in (('network_g', 8), ('network_t1', 16), ('network_t2', 16)):
        opt[key].update(dim=dim, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    opt['network_scm_e']['teacher_channels'] = [16, 32, 64]
    opt['network_scm_d']['teacher_channels'] = [64, 32, 32]
    path = save_random_weights(opt['network_t1'], os.path.join(workdir, f'{name}_teacher.pth'))
    opt['path'].update(pretrain_network_t1=path, pretrain_network_t2=path)
    return opt


@pytest.fixture
def opt(restoration_root, tmp_path):
    return restormer_opt(restoration_root, str(tmp_path))


def batch(seed=0):
    return random_batch(seed=seed, scale=1, size=PATCH)


# ----------------------------------------------------------------------------------------------- option files
@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('task', TASKS)
def test_option_files_hold_the_papers_settings(arch, task):
    opt = load_option(os.path.join(OPTIONS, f'slkd_{arch}_{task}.yml'))
    train = opt['train']
    assert opt['model_type'] == 'KDSLKDModel' and train['teacher_inputs'] == {'t1': 'lq', 't2': 'gt'}
    assert opt['network_t1'] == opt['network_t2'] and opt['path']['pretrain_network_t1'] == opt['path'][
        'pretrain_network_t2'], 'teacher B is teacher A fed the clean image (Sec. II-A)'
    assert (train['pixel_opt']['type'], train['pixel_opt']['loss_weight']) == ('L1Loss', 1.0)  # Eq. 5
    assert (train['kl_opt']['type'], train['kl_opt']['loss_weight']) == ('KDImageKLLoss', 0.5)  # alpha_1
    assert train['naturalness_opt']['loss_weight'] == train['edge_texture_opt']['loss_weight'] == 0.1  # alpha_2
    assert train['optim_g'] == {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]}
    assert train['scheduler']['eta_min'] == 1e-6 and train['scheduler']['periods'] == [train['total_iter']]
    data = opt['datasets']['train']
    assert (data['gt_size'], data['batch_size_per_gpu']) == (128, 8)
    pairs = {'derain': 13712, 'deblur': 2103, 'denoise': 96000}[task]  # 100 epochs at batch 8
    assert train['total_iter'] == math.ceil(100 * pairs / 8)
    taps = train['feature_taps']
    assert taps['network_g'] == taps['network_t1'] + taps['network_t2']
    levels = 4 if arch == 'uformer' else 3
    assert len(taps['network_t1']) == len(taps['network_t2']) == levels  # Eq. 2-3 share n
    for scm, teacher in (('network_scm_e', 'network_t1'), ('network_scm_d', 'network_t2')):
        assert len(opt[scm]['student_channels']) == len(opt[scm]['teacher_channels']) == len(taps[teacher])


def test_tokens_to_map_is_uformers_own_reshape():
    from basicsr.archs import build_network
    opt = load_option(os.path.join(OPTIONS, 'slkd_uformer_derain.yml'))
    net = build_network(shrink_network(opt['network_g'])).eval()
    kept = {}
    net.encoderlayer_1.register_forward_hook(lambda m, i, o: kept.update(tokens=o))
    net.dowsample_1.conv.register_forward_pre_hook(lambda m, i: kept.update(map=i[0]))
    with torch.no_grad():
        net(torch.rand(1, 3, 12, 20))  # padded to a square by the network
    assert kept['tokens'].dim() == 3 and torch.equal(tokens_to_map(kept['tokens']), kept['map'])

    x = torch.arange(2 * 3 * 4 * 6.).view(2, 3, 4, 6)
    tokens = x.flatten(2).transpose(1, 2)
    assert torch.equal(tokens_to_map(tokens, (8, 12)), x) and torch.equal(tokens_to_map(tokens, (4, 6)), x)
    assert tokens_to_maps([x, x[..., :4].flatten(2).transpose(1, 2)])[1].shape == (2, 3, 4, 4)
    assert tokens_to_map(x) is x  # NCHW passes unchanged
    with pytest.raises(ValueError, match='square'):
        tokens_to_map(tokens)
    with pytest.raises(ValueError, match='no integer downscaling of the 5 x 12 grid'):
        tokens_to_map(tokens, (5, 12))


# ----------------------------------------------------------------------------------------------- one step
def test_gradients_reach_the_student_and_both_scms_only(opt, tmp_path):
    model = build_model_from(opt, str(tmp_path / 'exp'))
    teachers = {name: snapshot(net) for name, net in model.teachers.items()}
    assert same_tensors(teachers['t1'], teachers['t2'])  # one file
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kl', 'l_nc', 'l_et', 'et_gates_saturated'}
    losses = [model.log_dict[name] for name in ('l_pix', 'l_kl', 'l_nc', 'l_et')]
    assert all(math.isfinite(value) and value > 0 for value in losses)
    student = [p.grad for p in model.net_g.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in student)
    for name in ('scm_e', 'scm_d'):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.helpers[name].parameters()), name
    assert all(p.grad is None for net in model.teachers.values() for p in net.parameters())
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert {id(p) for net in model.helpers.values() for p in net.parameters()} <= optimised
    scm = snapshot(model.helpers['scm_e'])
    model.feed_data(batch(1))
    model.optimize_parameters(2)
    assert differing_tensors(scm, snapshot(model.helpers['scm_e'])), 'the SCM trains'
    for name, net in model.teachers.items():
        assert not net.training and same_tensors(teachers[name], snapshot(net)), f'network_{name} changed'


def tapped(net, paths, x):
    """Outputs of ``paths`` of ``net`` on ``x``, by forward hooks of this test (not the model's taps)."""
    modules, kept = dict(net.named_modules()), {}
    handles = [modules[p].register_forward_hook(lambda m, i, o, p=p: kept.update({p: o})) for p in paths]
    with torch.no_grad():
        out = net(x)
    for handle in handles:
        handle.remove()
    return out, [kept[p] for p in paths]


def image_kl(student, teacher, eps=1e-8):
    """Eq. 4 by loops: each channel of each image a distribution over its pixels, Σ p log(p / q), mean over (n, c)."""
    terms = []
    for n in range(student.shape[0]):
        for c in range(student.shape[1]):
            p = student[n, c].double().clamp(min=0).flatten() + eps
            q = teacher[n, c].double().clamp(min=0).flatten() + eps
            p, q = p / p.sum(), q / q.sum()
            terms.append(sum(p[i] * math.log(p[i] / q[i]) for i in range(len(p))))
    return float(sum(terms)) / len(terms)


@pytest.mark.parametrize('source', ['gt', 'lq'], ids=['teacher B clean (SLKD)', 'teacher B degraded (Tab. IV)'])
def test_each_term_is_its_equation_on_the_right_networks_and_inputs(opt, tmp_path, source):
    opt['train']['teacher_inputs']['t2'] = source
    opt['train']['kl_opt']['loss_weight'] = 0.7
    model = build_model_from(opt, str(tmp_path / 'exp'))
    data = batch()
    student_net = copy.deepcopy(model.net_g).eval()
    scm_e, scm_d = (copy.deepcopy(model.helpers[name]) for name in ('scm_e', 'scm_d'))
    with torch.no_grad():
        student, features = tapped(student_net, ENCODER + DECODER, data['lq'])
        teacher_a, encoder_a = tapped(model.teachers['t1'], ENCODER, data['lq'])
        teacher_b, decoder_b = tapped(model.teachers['t2'], DECODER, data[source])
        naturalness = LOSS_REGISTRY.get('KDNaturalnessLoss')(loss_weight=0.1)(*scm_e(features[:3], encoder_a))
        edge_texture_loss = LOSS_REGISTRY.get('KDEdgeTextureLoss')(loss_weight=0.1)
        edge_texture = edge_texture_loss(*scm_d(features[3:], decoder_b))
    model.feed_data(data)
    model.optimize_parameters(1)
    logged = model.log_dict
    assert logged['l_pix'] == pytest.approx((student - teacher_b).abs().mean().item(), rel=1e-4)  # Eq. 5
    assert logged['l_kl'] == pytest.approx(0.7 * image_kl(student, teacher_a), rel=1e-3)  # Eq. 4
    assert logged['l_nc'] == pytest.approx(naturalness.item(), rel=1e-4)  # Eq. 2, encoder levels, teacher A
    assert logged['l_et'] == pytest.approx(edge_texture.item(), rel=1e-4)  # Eq. 3, decoder levels, teacher B
    saturated = edge_texture_loss.saturation()['et_gates_saturated'].item()  # the student's gates of this step
    assert logged['et_gates_saturated'] == pytest.approx(saturated, abs=1e-6)
    if source == 'lq':
        assert torch.allclose(teacher_a, teacher_b)


def test_tab_iv_ablation_without_the_naturalness_loss_trains(opt, tmp_path):
    opt['train'].pop('naturalness_opt')
    opt.pop('network_scm_e')
    taps = opt['train']['feature_taps']
    taps.pop('network_t1')
    taps['network_g'] = DECODER
    model = build_model_from(opt, str(tmp_path / 'exp'))
    assert list(model.helpers) == ['scm_d']
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kl', 'l_et', 'et_gates_saturated'}


def test_wrong_configurations_fail_before_the_first_step_naming_the_key(opt, tmp_path):

    def fails(change, match):
        broken = copy.deepcopy(opt)
        change(broken)
        with pytest.raises((ValueError, KeyError), match=match):
            build_model_from(broken, str(tmp_path / 'exp'))

    fails(lambda o: o.pop('network_scm_e'), r'train.naturalness_opt is set: it needs network_scm_e')
    fails(lambda o: o['train'].pop('edge_texture_opt'), r'train.edge_texture_opt is not set: remove network_scm_d')
    fails(lambda o: o['train']['feature_taps']['network_g'].pop(), r'train.feature_taps.network_g has 5 paths')
    fails(lambda o: o['train']['feature_taps']['network_t1'].__setitem__(0, 'encoder_level9'),
          r'train.feature_taps.network_t1: Restormer has no module "encoder_level9"')
    fails(lambda o: o['train'].update(naturalnes_opt={'type': 'KDNaturalnessLoss'}), r"train.\['naturalnes_opt'\]")
    fails(lambda o: (o.pop('network_t2'), o['path'].pop('pretrain_network_t2')), r'network_t1 \(teacher A\) and '
          r'network_t2')
    fails(lambda o: o['train']['edge_texture_opt'].update(type='KDNaturalnessLoss'),
          r'train.edge_texture_opt.type = KDNaturalnessLoss: KDSLKDModel takes KDEdgeTextureLoss there')
    fails(lambda o: o['network_scm_d'].update(teacher_channels=[64, 32, 16]),
          r'network_scm_d does not fit the tapped levels.*level 2: expects 16 student and 16 teacher channels, '
          r'got student \(1, 16, 16, 16\) and teacher \(1, 32, 16, 16\)')
    model = build_model_from(copy.deepcopy(opt), str(tmp_path / 'exp'))  # the unbroken options train
    model.feed_data(batch())
    model.optimize_parameters(1)


def teacher_a_a_level_deeper(opt):
    """Teacher A's levels 2, 3 and its latent, with an SCM of their channels: only the resolutions differ."""
    opt['train']['feature_taps']['network_t1'] = ['encoder_level2', 'encoder_level3', 'latent']
    opt['network_scm_e']['teacher_channels'] = [32, 64, 128]


@pytest.mark.parametrize('change, match', [
    (teacher_a_a_level_deeper,
     r'train.feature_taps: network_g.encoder_level1 gives \(16, 16\) maps but network_t1.encoder_level2 \(8, 8\)'),
    (lambda opt: opt['train']['feature_taps'].update(network_g=ENCODER + DECODER[::-1]),
     r"train.feature_taps.network_g = \[.*'decoder_level1', 'decoder_level2', 'decoder_level3'\]: list each module "
     r"once, in the order it runs .*'decoder_level3', 'decoder_level2', 'decoder_level1'\]"),
    (lambda opt: opt['train']['feature_taps'].update(network_t2=DECODER[::-1]),
     r"train.feature_taps.network_t2 = \['decoder_level1', .*in the order it runs .*\['decoder_level3', "),
], ids=['teacher A a level deeper', 'student decoder levels reversed', 'teacher B decoder levels reversed'])
def test_levels_of_two_resolutions_or_out_of_order_are_refused_before_the_first_step(opt, tmp_path, change, match):
    """Level k of the student pairs with level k of the teacher (one downsampling factor): a pair of other sizes
    would be resized silently by a lenient SCM, and swapped taps pair the wrong levels."""
    change(opt)
    with pytest.raises(ValueError, match=match):
        build_model_from(opt, str(tmp_path / 'exp'))


# ----------------------------------------------------------------------------------------------- DDP, resume
def test_two_cpu_ranks_hold_identical_students_and_scms(restoration_root, tmp_path):
    opt = restormer_opt(restoration_root, str(tmp_path), 'ddp')
    opt['model_type'] = 'KDRecordingSLKDModel'
    init, final, _ = two_rank_run(opt, str(tmp_path))
    root = tmp_path / 'experiments' / 'ddp'
    for name in ('g', 'scm_e', 'scm_d'):
        assert not differing_tensors(final[0][name], final[1][name]), f'net_{name}: the ranks diverged'
        assert differing_tensors(init[1][name], final[1][name]), f'net_{name} did not train'
        saved = torch.load(root / 'models' / f'net_{name}_latest.pth', weights_only=True)['params']
        assert not differing_tensors(saved, final[1][name])


def test_auto_resume_restores_student_scms_optimiser_and_both_teachers(restoration_root, tmp_path):
    opt = restormer_opt(restoration_root, str(tmp_path), 'resume')
    opt['model_type'] = 'KDRecordingSLKDModel'
    saved, resumed, at_iter_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert_networks_resumed(resumed, at_iter_2, ('g', 'scm_e', 'scm_d'))
    assert len(saved['optimizers'][0]['param_groups']) == 2  # the student's group and the SCMs'
    assert_optimisers_resumed(saved, resumed)
    teacher = torch.load(opt['path']['pretrain_network_t1'], weights_only=True)['params']
    for name in ('t1', 't2'):
        assert not differing_tensors(resumed['teachers'][name], teacher)


# ----------------------------------------------------------------------------------------------- Rain1400
def test_rain1400_pairs_each_rainy_image_with_its_scene_and_checks_the_count(tmp_path, capsys):
    src, out = tmp_path / 'testing', tmp_path / 'Rain13K'
    rng = np.random.default_rng(0)
    for folder, names in (('ground_truth', ['901.jpg', '902.jpg']),
                          ('rainy_image', [f'{i}_{k}.jpg' for i in (901, 902) for k in (1, 2, 14)])):
        os.makedirs(src / folder)
        for name in names:
            cv2.imwrite(str(src / folder / name), rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))
    prepare_rain13k.main(['--sets', '--rain1400', str(src), '--out', str(out), '--expect-counts', 'off'])
    written = out / 'test' / 'Rain1400'
    names = sorted(os.listdir(written / 'input'))
    assert names == sorted(os.listdir(written / 'target')) == sorted(os.listdir(src / 'rainy_image'))
    for name in names:
        scene = name.split('_')[0]
        assert (written / 'target' / name).read_bytes() == (src / 'ground_truth' / f'{scene}.jpg').read_bytes()
        assert (written / 'input' / name).read_bytes() == (src / 'rainy_image' / name).read_bytes()
    with pytest.raises(SystemExit):
        prepare_rain13k.main(['--sets', '--rain1400', str(src), '--out', str(out)])
    assert 'found 6 images (pairs), but the official Rain1400 has 1,400' in capsys.readouterr().err
    cv2.imwrite(str(src / 'rainy_image' / '903_1.jpg'), np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(SystemExit):
        prepare_rain13k.main(['--sets', '--rain1400', str(src), '--out', str(out), '--expect-counts', 'off'])
    assert "1 rainy images without a clean scene <id> for <id>_<k> ['903_1.jpg']" in capsys.readouterr().err
