"""MiPKD: the feature prior mixer's loss and mixing against loops, the block mixer's replaced forward against RCAN run
by hand, which parameters one step trains, configuration errors named by their key, and --auto_resume (DDP: in
test_distributed.py; the BasicSR fork: test_basicsr_fork.py; the step cost: test_benchmark.py)."""
import math
import os

import pytest
import torch

from conftest import (OPTIONS, assert_networks_resumed, assert_optimisers_resumed, build_model_from, differing_tensors,
                      fixed, interrupted_and_resumed, load_option, loss, mae_by_loop, random_batch, shrink_option)
from basicsr_kd.parsed_options import parsed_options
from kd_archs.kd_mipkd_mixer_arch import KDPriorMixer
from kd_models.kd_mipkd_model import KDMiPKDModel, replaced_outputs
from kd_models.kd_token_maps import map_to_tokens, tokens_to_map


# ------------------------------------------------------------------------------------------------------- L_FPM
@pytest.mark.parametrize('ae_weight', [0.0, 0.5])
@pytest.mark.parametrize('loss_weight', [1.0, 0.1])
def test_feature_prior_mixer_loss_is_the_printed_sum_over_positions(ae_weight, loss_weight):
    shapes = [(2, 3, 4, 5), (2, 6, 2, 3)]  # two positions of other channels and sizes
    mixed = [fixed(*shape, seed=k) for k, shape in enumerate(shapes)]
    teacher = [fixed(*shape, seed=10 + k) for k, shape in enumerate(shapes)]
    reconstructed = [fixed(*shape, seed=20 + k) for k, shape in enumerate(shapes)]
    expected = 0.0
    for k in range(len(shapes)):
        expected += mae_by_loop(mixed[k], teacher[k]) + ae_weight * mae_by_loop(reconstructed[k], teacher[k])
    expected *= loss_weight
    criterion = loss('KDFeaturePriorMixerLoss', ae_weight=ae_weight, loss_weight=loss_weight)
    result = criterion(mixed, teacher, reconstructed)
    assert math.isclose(result.item(), expected, rel_tol=1e-12)


def test_feature_prior_mixer_loss_refuses_unpaired_inputs():
    a, b = fixed(1, 2, 3, 3), fixed(1, 2, 3, 4)
    with pytest.raises(ValueError, match='position 0 has mixed'):
        loss('KDFeaturePriorMixerLoss')([a], [b], [b])
    with pytest.raises(ValueError, match='one of each per position'):
        loss('KDFeaturePriorMixerLoss')([a], [a, a], [a])
    with pytest.raises(ValueError, match='ae_weight must be a number >= 0'):
        loss('KDFeaturePriorMixerLoss', ae_weight=-1)


# ------------------------------------------------------------------------------------------------------- mixer
@pytest.mark.parametrize('mask_ratio', [0.3, 0.7])
def test_mixer_mixes_the_latents_element_by_element_and_decodes_both_spaces(mask_ratio):
    torch.manual_seed(0)
    mixer = KDPriorMixer([3, 5], [4, 6], latent_channels=2, num_layers=2).double()
    students = [fixed(2, 3, 3, 4, seed=1), fixed(2, 5, 2, 2, seed=2)]
    teachers = [fixed(2, 4, 3, 4, seed=3), fixed(2, 6, 2, 2, seed=4)]
    generator = torch.Generator().manual_seed(5)
    masks = [(torch.rand(2, 2, *s.shape[2:], generator=generator) < mask_ratio).double() for s in students]
    mixed_t, mixed_s, reconstructed = mixer(students, teachers, masks)
    for k in range(2):
        z_s, z_t = mixer.encoders_s[k](students[k]), mixer.encoders_t[k](teachers[k])
        z = torch.empty_like(z_s)
        for index in torch.cartesian_prod(*(torch.arange(n) for n in z.shape)).tolist():
            z[tuple(index)] = z_s[tuple(index)] if masks[k][tuple(index)] == 1 else z_t[tuple(index)]
        assert torch.allclose(mixed_t[k], mixer.decoders_t[k](z), atol=1e-12)
        assert torch.allclose(mixed_s[k], mixer.decoders_s[k](z), atol=1e-12)
        assert torch.allclose(reconstructed[k], mixer.decoders_t[k](z_t), atol=1e-12)
        assert mixed_t[k].shape == teachers[k].shape and mixed_s[k].shape == students[k].shape


def test_tokens_round_trip_through_maps():
    tokens = fixed(2, 12, 5)  # a 3 x 4 grid of 5 channels
    as_map = tokens_to_map(tokens, (3, 4))
    assert as_map[1, :, 2, 1].tolist() == tokens[1, 2 * 4 + 1].tolist()
    assert torch.equal(map_to_tokens(as_map, tokens), tokens)
    assert map_to_tokens(as_map, as_map) is as_map


# ------------------------------------------------------------------------------------------------------- model
def shrink_rcan(opt):
    """3 residual groups of 1 (student) and 2 (teacher) blocks, a position after each group; channel attention
    squeezed to 4 channels (one channel is often a dead ReLU)."""
    for key, blocks in (('network_g', 1), ('network_t', 2)):
        opt[key].update(num_group=3, num_block=blocks, squeeze_factor=4)
        opt['train']['feature_taps'][key] = ['body.0', 'body.1', 'body.2']


def mipkd_opt(tmp_path, option='mipkd_rcan_x2.yml', **mixing):
    opt = load_option(os.path.join(OPTIONS, option))
    if opt['network_g']['type'] == 'RCAN':
        shrink_rcan(opt)
    opt['network_mixer']['latent_channels'] = 8
    opt['train']['prior_mixing'].update(mixing)
    return shrink_option(opt, '/nonexistent', str(tmp_path), 'mipkd')


def model_from(opt, tmp_path, seed=1):
    model = build_model_from(opt, str(tmp_path / 'exp'))
    model.feed_data(random_batch(seed=seed, scale=opt['scale']))
    return model


def rcan_by_hand(net, lq, index, feature):
    """BasicSR's RCAN forward written out, with residual group ``index``'s output replaced by ``feature``."""
    mean = net.mean.type_as(lq)
    x = net.conv_first((lq - mean) * net.img_range)
    res = x
    for i, group in enumerate(net.body):
        res = feature if i == index else group(res)
    res = net.conv_after_body(res) + x
    return net.conv_last(net.upsample(res)) / net.img_range + mean


def test_replaced_outputs_run_the_network_on_from_the_given_feature(tmp_path):
    model = model_from(mipkd_opt(tmp_path), tmp_path)
    net = model.teachers['t']
    feature = fixed(2, 16, 16, 16, dtype=torch.float32)
    with torch.no_grad(), replaced_outputs(net, {'body.1': feature}):
        replaced = net(model.lq)
    with torch.no_grad():
        assert torch.allclose(replaced, rcan_by_hand(net, model.lq, 1, feature), atol=1e-5)
        assert not torch.allclose(replaced, net(model.lq), atol=1e-3)  # the hook is gone after the block


def test_replacing_a_token_output_by_its_own_map_changes_nothing(tmp_path):
    model = model_from(mipkd_opt(tmp_path, 'mipkd_swinir_x2.yml'), tmp_path)
    net = model.teachers['t']
    with torch.no_grad():
        plain = net(model.lq)
        own = tokens_to_map(model.taps['t'].take()[1], tuple(model.lq.shape[-2:]))  # layers.5
        with replaced_outputs(net, {'layers.5': own}):
            again = net(model.lq)
    assert torch.allclose(plain, again, atol=1e-6)


@pytest.mark.parametrize('seed', [0, 3])
def test_the_block_term_is_the_replaced_student_forward_against_the_teacher(tmp_path, seed):
    model = model_from(mipkd_opt(tmp_path, student_prob=1.0), tmp_path)  # the mixed feature goes on in the student
    torch.manual_seed(seed)
    model.forward_networks()
    k = model.block_position
    assert model.diagnostics['bpm_to_student'] == 1.0 and model.block_to_student
    group = int(model.taps['g'].paths[k].split('.')[1])  # body.<group>
    with torch.no_grad():
        by_hand = rcan_by_hand(model.get_bare_model(model.net_g), model.lq, group, model.mixed_s[k])
        assert torch.allclose(model.block_output, by_hand, atol=1e-5)
        l1 = (model.block_output - model.teacher_outputs['t']).abs().mean()
        assert math.isclose(model.compute_losses(1)['l_bpm'].item(), 0.1 * l1.item(), rel_tol=1e-5)


@pytest.mark.parametrize('student_prob', [0.25, 0.8])
def test_the_block_positions_are_drawn_uniformly_and_the_network_by_student_prob(tmp_path, student_prob):
    model = model_from(mipkd_opt(tmp_path, student_prob=student_prob), tmp_path)
    torch.manual_seed(0)
    drawn = [model.draw_block_route(3) for _ in range(3000)]
    for j in range(3):  # 1000 expected, binomial sd 26
        assert 900 <= sum(1 for k, _ in drawn if k == j) <= 1100
    sd = math.sqrt(3000 * student_prob * (1 - student_prob))
    assert abs(sum(1 for _, s in drawn if s) - 3000 * student_prob) <= 4 * sd


@pytest.mark.parametrize('student_prob', [1.0, 0.0])
def test_one_step_trains_the_student_and_the_mixer_never_the_teacher(tmp_path, student_prob):
    model = model_from(mipkd_opt(tmp_path, student_prob=student_prob), tmp_path)
    model.optimize_parameters(1)
    assert all(p.grad is None for p in model.teachers['t'].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net_g.parameters())
    mixer = model.get_bare_model(model.helpers['mixer'])
    for name, parameter in mixer.named_parameters():  # L_FPM trains every encoder and D_T; L_BPM one D_S or none
        if name.startswith('decoders_s'):
            trained = student_prob == 1 and name.startswith(f'decoders_s.{model.block_position}.')
        else:
            trained = True
        assert (parameter.grad is not None and parameter.grad.abs().sum() > 0) == trained, name


def test_the_block_term_alone_trains_the_mixer_through_the_frozen_teacher(tmp_path):
    opt = mipkd_opt(tmp_path, student_prob=0.0)  # the mixed feature goes on in the teacher
    del opt['train']['feature_opt']
    model = model_from(opt, tmp_path)
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_bpm', 'bpm_to_student'}
    assert all(p.grad is None for p in model.teachers['t'].parameters())
    k = model.block_position
    mixer = model.get_bare_model(model.helpers['mixer'])
    for name, parameter in mixer.named_parameters():  # E_S, E_T and D_T of position k, through the teacher
        trained = any(name.startswith(f'{part}.{k}.') for part in ('encoders_s', 'encoders_t', 'decoders_t'))
        assert (parameter.grad is not None and parameter.grad.abs().sum() > 0) == trained, name


@pytest.mark.parametrize('change, message', [
    (lambda o: o['train']['prior_mixing'].update(mask_ratio=1.5),
     r'^train\.prior_mixing\.mask_ratio = 1\.5: must be a probability'),
    (lambda o: o['train']['prior_mixing'].update(student_prob=True),
     r'^train\.prior_mixing\.student_prob = True: must be a probability'),
    (lambda o: o['train']['prior_mixing'].update(ratio=0.5), r"^train\.prior_mixing: unknown option\(s\) \['ratio'\]"),
    (lambda o: o['network_mixer'].update(student_channels=[16, 16, 8]),
     r'^network_mixer\.student_channels = \[16, 16, 8\] but the positions train\.feature_taps\.network_g'),
    (lambda o: o['network_mixer'].update(teacher_channels=[16, 16, 12]),
     r'^network_mixer\.teacher_channels = \[16, 16, 12\] but the positions train\.feature_taps\.network_t'),
    (lambda o: o['network_mixer'].update(teacher_channels=[16, 16]),
     r'^network_mixer\.teacher_channels = \[16, 16\] lists 2 positions but train\.feature_taps\.network_t'),
    (lambda o: [o['train']['feature_taps'].update(network_t=['body.2', 'body.6']),
                o['network_mixer'].update(teacher_channels=[16, 16])],
     r'^KDMiPKDModel needs train\.feature_taps\.network_g and \.network_t, equally long'),
    (lambda o: o['train']['feature_opt'].update(type='L1Loss'),
     r'^train\.feature_opt\.type = L1Loss: KDMiPKDModel takes KDFeaturePriorMixerLoss there'),
    (lambda o: o['train']['feature_opt'].update(ae_weight=-1), r'^train\.feature_opt: .*ae_weight must be'),
    (lambda o: o.pop('network_mixer'), r'^KDMiPKDModel needs network_mixer'),
    (lambda o: [o['train'].pop('feature_opt'), o['train'].pop('block_opt')],
     r'^KDMiPKDModel needs train\.feature_opt .* or both'),
], ids=['mask ratio', 'bool probability', 'unknown mixing key', 'student channels', 'teacher channels',
        'mixer positions', 'unpaired positions', 'feature loss kind', 'negative ae weight', 'no mixer',
        'no mixer loss'])
def test_wrong_configurations_fail_before_the_first_step_naming_the_key(tmp_path, change, message):
    opt = mipkd_opt(tmp_path)
    change(opt)
    with pytest.raises(ValueError, match=message):
        build_model_from(opt, str(tmp_path / 'exp'))


def test_ddp_without_find_unused_parameters_is_refused_before_the_student_is_wrapped(tmp_path):
    opt = parsed_options(mipkd_opt(tmp_path), str(tmp_path / 'exp'), True)
    opt.update(dist=True, find_unused_parameters=False)  # no process group: DDP would fail if it got that far
    with pytest.raises(ValueError, match=r'^train\.block_opt under DDP needs find_unused_parameters: true'):
        KDMiPKDModel(opt)


def test_auto_resume_restores_student_mixer_and_optimiser(demo_root, tmp_path):
    opt = load_option(os.path.join(OPTIONS, 'mipkd_rcan_x2.yml'))
    shrink_rcan(opt)
    opt['network_mixer']['latent_channels'] = 8
    opt = shrink_option(opt, demo_root, str(tmp_path), 'mipkd')
    opt['model_type'] = 'KDRecordingMiPKDModel'
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert sorted(resumed['networks']) == ['g', 'mixer']
    assert_networks_resumed(resumed, at_2, ('g', 'mixer'))
    assert_optimisers_resumed(saved, resumed)
    assert len(saved['optimizers'][0]['param_groups']) == 2  # the student's group and the mixer's
    assert saved['kd']['method'] == {}  # no state besides the networks: masks and R are drawn anew at every step
    teacher = torch.load(opt['path']['pretrain_network_t'], weights_only=True)['params']
    assert not differing_tensors(resumed['teachers']['t'], teacher)
