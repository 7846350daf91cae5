"""DFKD (data-free KD with a generator): its two generator losses against loop computations of their formulas, the
generator network, KDDFKDModel's two steps (which parameters take gradient in each, no training image used), errors
named by their key before the first step, and --auto_resume of student, generator and both optimisers (DDP: in
test_distributed.py)."""
import math
import os

import pytest
import torch

from conftest import (OPTIONS, assert_networks_resumed, assert_optimisers_resumed, build_model_from, differing_tensors,
                      fixed, interrupted_and_resumed, load_option, loss, mae_by_loop, random_batch, same_tensors,
                      shrink_option, snapshot)
from basicsr.archs import build_network
from test_skd_model import tiny

BACKBONES = ['dfkd_restormer_derain.yml', 'dfkd_uformer_deblur.yml', 'dfkd_drsformer_denoise.yml']
# Shrunk Uformer (img_size 16) runs its bottleneck at 1 x 1: one token per attention window, so the query projection
# and the position bias there get a zero gradient (as in test_wavekd_model.py)
ONE_TOKEN_ATTENTION = ('conv.blocks.0.attn.relative_position_bias_table', 'conv.blocks.0.attn.qkv.to_q.')


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dfkd_opt(tmp_path, root='/nonexistent', option='dfkd_restormer_derain.yml', **dfkd):
    opt = shrink_option(tiny(load_option(os.path.join(OPTIONS, option))), root, str(tmp_path), 'dfkd')
    opt['network_gen']['latent_dim'] = 8
    opt['train']['dfkd'].update(dfkd)
    return opt


def model_from(opt, tmp_path):
    return build_model_from(opt, str(tmp_path / 'exp'))


# ----------------------------------------------------------------------------------------------- loss references
def distance_by_loop(a, b, distance, reduction):
    """reduce over every element of dist(a - b), element by element."""
    pairs = zip(a.flatten().tolist(), b.flatten().tolist())
    values = [abs(x - y) if distance == 'l1' else (x - y)**2 for x, y in pairs]
    return sum(values) / len(values) if reduction == 'mean' else sum(values)


def block_means_by_loop(x, k):
    """The mean of each k x k block of each (sample, channel) map, by explicit loops; (B, C, H/k, W/k)."""
    batch, channels, height, width = x.shape
    out = torch.zeros(batch, channels, height // k, width // k, dtype=x.dtype)
    for b in range(batch):
        for c in range(channels):
            for i in range(height // k):
                for j in range(width // k):
                    block = [x[b, c, i * k + u, j * k + v].item() for u in range(k) for v in range(k)]
                    out[b, c, i, j] = sum(block) / k**2
    return out


SETTINGS = [('l1', 'mean', 1.0), ('mse', 'mean', 1.0), ('l1', 'sum', 1.0), ('l1', 'mean', 0.25), ('mse', 'sum', 2.0)]


@pytest.mark.parametrize('distance, reduction, loss_weight', SETTINGS)
def test_adversarial_loss_is_minus_log_one_plus_the_student_teacher_distance(distance, reduction, loss_weight):
    student, teacher = fixed(2, 3, 4, 5, seed=1), fixed(2, 3, 4, 5, seed=2)
    cri = loss('KDDFKDAdversarialLoss', distance=distance, reduction=reduction, loss_weight=loss_weight)
    expected = -loss_weight * math.log(1 + distance_by_loop(student, teacher, distance, reduction))
    assert cri(student, teacher).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize('downscale', [1, 2, 4])
@pytest.mark.parametrize('distance, reduction, loss_weight', SETTINGS)
def test_reconstruction_loss_compares_the_block_means_of_the_restored_and_the_generated_images(
        downscale, distance, reduction, loss_weight):
    restored, generated = fixed(2, 3, 8, 4, seed=3), fixed(2, 3, 8, 4, seed=4)
    cri = loss('KDDFKDReconstructionLoss', downscale=downscale, distance=distance, reduction=reduction,
               loss_weight=loss_weight)
    expected = loss_weight * distance_by_loop(block_means_by_loop(restored, downscale),
                                              block_means_by_loop(generated, downscale), distance, reduction)
    assert cri(restored, generated).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize('name, kwargs, message', [
    ('KDDFKDAdversarialLoss', {'distance': 'l2'}, r"^distance = 'l2': use one of \['l1', 'mse'\]$"),
    ('KDDFKDAdversarialLoss', {'reduction': 'none'}, r"^reduction = 'none': use one of \['mean', 'sum'\]$"),
    ('KDDFKDReconstructionLoss', {'downscale': 0}, r'^downscale = 0: the block side k must be a positive integer$'),
    ('KDDFKDReconstructionLoss', {'downscale': 2.0}, r'^downscale = 2\.0: the block side k'),
])
def test_wrong_loss_settings_are_refused(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss(name, **kwargs)


def test_reconstruction_blocks_must_tile_the_image():
    with pytest.raises(ValueError, match=r'^downscale = 3 does not divide the generated image\'s size 8x6$'):
        loss('KDDFKDReconstructionLoss', downscale=3)(fixed(1, 3, 8, 6), fixed(1, 3, 8, 6))


# ----------------------------------------------------------------------------------------------- generator
def test_generator_makes_images_in_the_unit_range_from_the_authors_layers():
    net = build_network({'type': 'KDDFKDGenerator', 'img_size': 12, 'latent_dim': 5, 'out_channels': 3, 'num_feat': 8})
    images = net(torch.randn(2, 5))
    assert images.shape == (2, 3, 12, 12) and images.min() >= 0 and images.max() <= 1
    linear = 5 * 8 * 3 * 3 + 8 * 3 * 3  # latent -> num_feat x (s/4)^2, with bias
    convs = (8 * 8 * 9 + 8) + (8 * 4 * 9 + 4) + (4 * 3 * 9 + 3)
    norms = 2 * (8 + 8 + 4)  # three affine InstanceNorms
    assert sum(p.numel() for p in net.parameters()) == linear + convs + norms
    assert net.norm1.eps == net.norm2.eps == 0.8 and net.norm0.eps == 1e-5
    with pytest.raises(ValueError, match=r'^img_size = 10: the generator upsamples twice by 2'):
        build_network({'type': 'KDDFKDGenerator', 'img_size': 10})


# ----------------------------------------------------------------------------------------------- model steps
@pytest.mark.parametrize('option', BACKBONES)
def test_student_step_trains_the_student_only_and_generator_step_the_generator_only(tmp_path, option):
    model = model_from(dfkd_opt(tmp_path, option=option, student_steps=2), tmp_path)
    teacher, generator = model.teachers['t'], model.helpers['gen']
    teacher_before, generator_before = snapshot(teacher), snapshot(generator)
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)  # 1 % k_S != 0: the student step alone
    assert set(model.log_dict) == {'l_kd'}
    without_gradient = {name for name, p in model.net_g.named_parameters() if p.grad is None or not p.grad.any()}
    expected = {name for name, _ in model.net_g.named_parameters() if name.startswith(ONE_TOKEN_ATTENTION)}
    assert without_gradient == (expected if 'uformer' in option else set())
    assert all(p.grad is None for p in generator.parameters()) and same_tensors(snapshot(generator), generator_before)
    student_grads = {name: p.grad.clone() for name, p in model.net_g.named_parameters() if p.grad is not None}
    student_after_step = snapshot(model.net_g)

    model.optimize_parameters(2)  # the student step, then the generator step
    assert set(model.log_dict) == {'l_kd', 'l_gen', 'l_rec'}
    assert all(p.grad is not None and p.grad.any() for p in generator.parameters())
    assert sorted(differing_tensors(snapshot(generator), generator_before)) == sorted(generator_before)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert same_tensors(snapshot(teacher), teacher_before)
    # the student's gradients are those of its own second step: the generator step added none
    model.optimizer_g.zero_grad()
    for name, p in model.net_g.named_parameters():
        assert p.grad is None or not p.grad.any(), name
    model.generator_step()
    assert all(p.grad is None or not p.grad.any() for p in model.net_g.parameters())
    assert student_grads and differing_tensors(snapshot(model.net_g), student_after_step)  # the student step moved it
    assert len(model.optimizers) == 2 and model.optimizers[1] is model.helper_optimizers['gen']
    assert {id(p) for p in model.optimizer_g.param_groups[0]['params']} == {id(p) for p in model.net_g.parameters()}
    assert len(model.optimizer_g.param_groups) == 1  # the generator is not in the student's optimiser
    assert {id(p) for group in model.optimizers[1].param_groups for p in group['params']} == \
        {id(p) for p in generator.parameters()}


def test_the_step_reads_no_training_image(tmp_path):
    model = model_from(dfkd_opt(tmp_path, student_steps=2), tmp_path)  # iteration 1: the student step alone
    start = snapshot(model.net_g)
    results = []
    for seed in (0, 1):  # two different batches of the same size
        model.net_g.load_state_dict(start)
        model.optimizer_g.state.clear()
        torch.manual_seed(5)
        model.feed_data(random_batch(seed=seed, scale=1, size=16))
        model.optimize_parameters(1)
        results.append((model.log_dict['l_kd'], snapshot(model.net_g)))
    assert results[0][0] == results[1][0] and same_tensors(results[0][1], results[1][1])


@pytest.mark.parametrize('adversarial, reconstruction', [
    ({'distance': 'l1', 'reduction': 'mean', 'loss_weight': 1.0}, {'downscale': 4, 'loss_weight': 1.0}),
    ({'distance': 'mse', 'reduction': 'sum', 'loss_weight': 0.5},
     {'downscale': 2, 'distance': 'mse', 'loss_weight': 3.0}),
], ids=['paper', "authors' code reductions"])
def test_the_terms_are_the_formulas_on_the_generated_inputs(tmp_path, adversarial, reconstruction):
    opt = dfkd_opt(tmp_path)
    opt['train']['adversarial_opt'].update(adversarial)
    opt['train']['reconstruction_opt'].update(reconstruction)
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=1, size=16))
    torch.manual_seed(3)
    model.forward_networks()
    l_kd = model.compute_losses(1)['l_kd'].item()
    x = model.lq
    assert x.shape == (2, 3, 16, 16)
    teacher = model.teachers['t'](x).detach()
    assert torch.equal(model.teacher_outputs['t'], teacher)
    assert l_kd == pytest.approx(mae_by_loop(model.output.detach(), teacher), rel=1e-5)

    generator, student = model.get_bare_model(model.helpers['gen']), model.get_bare_model(model.net_g)
    torch.manual_seed(4)
    z = torch.randn(2, 8)
    with torch.no_grad():
        generated = generator(z)
        restored, output = model.teachers['t'](generated), student(generated)
    torch.manual_seed(4)
    losses = model.generator_step()
    distance = distance_by_loop(output.double(), restored.double(), adversarial['distance'], adversarial['reduction'])
    assert losses['l_gen'].item() == pytest.approx(-adversarial['loss_weight'] * math.log(1 + distance), rel=1e-5)
    k = reconstruction['downscale']
    expected = reconstruction['loss_weight'] * distance_by_loop(
        block_means_by_loop(restored.double(), k), block_means_by_loop(generated.double(), k),
        reconstruction.get('distance', 'l1'), 'mean')
    assert losses['l_rec'].item() == pytest.approx(expected, rel=1e-5)


def test_without_reconstruction_the_generator_step_is_the_adversarial_term_alone(tmp_path):
    opt = dfkd_opt(tmp_path, student_steps=1)
    opt['train'].pop('reconstruction_opt')
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=1, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_kd', 'l_gen'}


# ----------------------------------------------------------------------------------------------- configuration
def without(key):
    return lambda opt: opt['train'].pop(key)


def setting(path, value):
    def edit(opt):
        *parents, last = path.split('.')
        node = opt
        for parent in parents:
            node = node[parent]
        node[last] = value
    return edit


@pytest.mark.parametrize('edit, message', [
    (lambda opt: opt.pop('network_gen'), r'^KDDFKDModel needs network_gen'),
    (without('optim_gen'), r'^KDDFKDModel needs train\.optim_gen'),
    (without('adversarial_opt'), r'^KDDFKDModel needs train\.adversarial_opt'),
    (without('kd_opt'), r'^KDDFKDModel needs train\.kd_opt'),
    (setting('train.pixel_opt', {'type': 'L1Loss'}), r'^train\.pixel_opt: DFKD is data-free'),
    (setting('train.progressive_patches', [[1, 16, 2]]), r'^train\.progressive_patches: DFKD is data-free'),
    (setting('train.teacher_inputs', {'t': 'gt'}), r'^train\.teacher_inputs: DFKD\'s teacher sees the generated'),
    (setting('train.dfkd', {'student_step': 5}), r'^train\.dfkd\.student_step: unknown option'),
    (setting('train.dfkd', {'student_steps': 0}), r'^train\.dfkd\.student_steps = 0: the student steps'),
    (setting('train.adversarial_opt', {'type': 'L1Loss'}), r'^train\.adversarial_opt\.type = L1Loss: KDDFKDModel '
                                                           r'takes KDDFKDAdversarialLoss there$'),
    (setting('train.reconstruction_opt.downscale', 3), r'^train\.reconstruction_opt\.downscale = 3 does not divide '
                                                       r'network_gen\.img_size = 16$'),
    (setting('train.adversarial_opt.distance', 'l2'), r"^train\.adversarial_opt: distance = 'l2'"),
    (setting('network_gen.out_channels', 1), r'^network_gen = .* makes images network_g cannot take'),
    (setting('train.optim_gen', {'type': 'Adamm', 'lr': 1e-4}), r'^train\.optim_gen\.type = Adamm is not an '
                                                                r'optimiser of torch\.optim'),
    (setting('train.optim_gen', {'type': 'Adam'}), r'^train\.optim_gen must give the type and lr'),
], ids=['no generator', 'no generator optimiser', 'no L_GEN', 'no L_KD', 'a GT loss', 'progressive patches',
        'teacher on GT', 'misspelt dfkd key', 'no student step', 'L_GEN of another kind', 'blocks do not tile',
        'unknown distance', 'grey generator for an RGB student', 'unknown optimiser', 'optimiser without lr'])
def test_wrong_options_fail_before_the_first_step_naming_the_key(tmp_path, edit, message):
    opt = dfkd_opt(tmp_path)
    edit(opt)
    with pytest.raises(ValueError, match=message):
        model_from(opt, tmp_path)


def test_a_scale_other_than_one_is_refused(tmp_path):
    opt = dfkd_opt(tmp_path)
    opt['scale'] = 2
    with pytest.raises(ValueError, match=r'^scale = 2: KDDFKDModel builds DFKD\'s same-size restoration form'):
        model_from(opt, tmp_path)


# ----------------------------------------------------------------------------------------------- resume
def test_auto_resume_restores_student_generator_and_both_optimisers(restoration_root, tmp_path):
    opt = dfkd_opt(tmp_path, restoration_root)
    opt['model_type'] = 'KDRecordingDFKDModel'
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert list(resumed['networks']) == ['g', 'gen']
    assert_networks_resumed(resumed, at_2, ('g', 'gen'))
    assert len(saved['optimizers']) == 2 and len(saved['schedulers']) == 2  # the student's and the generator's
    assert_optimisers_resumed(saved, resumed)
    models = tmp_path / 'experiments' / 'dfkd' / 'models'
    saved_files = ['net_g_2.pth', 'net_g_latest.pth', 'net_gen_2.pth', 'net_gen_latest.pth']  # no teacher
    assert sorted(path.name for path in models.iterdir()) == saved_files
    gen_at_3 = torch.load(models / 'net_gen_latest.pth', weights_only=True)['params']
    assert differing_tensors(gen_at_3, at_2['gen'])  # and the generator trains on after the resume
    student = build_network(opt['network_g'])  # the student loads alone, strictly, as plain SRModel loads it
    student.load_state_dict(torch.load(models / 'net_g_latest.pth', weights_only=True)['params'], strict=True)
