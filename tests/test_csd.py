"""CSD: the channel-splitting EDSR (KDSlimmableEDSR), its contrastive loss (KDCSDContrastiveLoss) against loop
definitions, and KDCSDModel (the terms of a step, where gradients go, the checkpoint a plain SRModel loads, errors named
by their key, --auto_resume; DDP in test_distributed.py)."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN

from conftest import (OPTIONS, assert_optimisers_resumed, build_model_from, differing_tensors, fixed,
                      interrupted_and_resumed, load_option, loss, mae_by_loop, random_batch, run_train, shrink_option,
                      snapshot, training_steps)

VGG_LAYERS = ['relu1_1', 'relu2_1']
EDSR_OPTIONS = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2, 'upscale': 2}


def edsr_opt(upscale, num_feat=16, num_block=2, res_scale=0.1):
    return dict(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block, upscale=upscale,
                res_scale=res_scale, img_range=255.)


def rcan_opt(upscale, num_feat=16):
    return dict(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_group=2, num_block=2, squeeze_factor=4,
                upscale=upscale, res_scale=0.5, img_range=255.)


FAMILIES = {'EDSR': (EDSR, edsr_opt), 'RCAN': (RCAN, rcan_opt)}


def slimmable(family, upscale, width=0.25, seed=0):
    torch.manual_seed(seed)
    options = {'type': f'KDSlimmable{family}', **FAMILIES[family][1](upscale), 'student_width': width}
    return build_network(options), options


# ------------------------------------------------------------------------------------------------ architecture
@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('upscale', [2, 3, 4])
def test_full_width_is_the_basicsr_network(family, upscale):
    net, _ = slimmable(family, upscale)
    plain_class, options = FAMILIES[family]
    plain = plain_class(**options(upscale))
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert list(net.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(net.state_dict())
    x = fixed(2, 3, 6, 7, dtype=torch.float32).sigmoid()
    assert torch.allclose(net(x), plain(x), atol=1e-6) and torch.equal(net(x), net(x, width=1.0))


def body_by_hand(state, family, c):
    """The body's sliced weights: EDSR's two convolutions per block, RCAN's two per RCAB, its channel attention's
    squeeze (16 channels and factor 4: 4, sliced as c / 4) and each group's closing convolution."""
    cut = {}

    def keep(name, out_channels, in_channels=None):
        weight = state[f'{name}.weight'][:out_channels]
        cut[f'{name}.weight'] = weight if in_channels is None else weight[:, :in_channels]
        cut[f'{name}.bias'] = state[f'{name}.bias'][:out_channels]

    for g in range(2):
        if family == 'EDSR':
            keep(f'body.{g}.conv1', c, c)
            keep(f'body.{g}.conv2', c, c)
            continue
        for b in range(2):
            block = f'body.{g}.residual_group.{b}.rcab'
            keep(f'{block}.0', c, c)
            keep(f'{block}.2', c, c)
            keep(f'{block}.3.attention.1', c // 4, c)
            keep(f'{block}.3.attention.3', c, c // 4)
        keep(f'body.{g}.conv', c, c)
    return cut, keep


def slice_by_hand(state, family, c, upscale):
    """The student's weights cut from the super-network's as the authors' forward slices them, written out layer by
    layer (independent of ``sliced_convolutions``)."""
    cut, keep = body_by_hand(state, family, c)
    keep('conv_first', c)
    keep('conv_after_body', c, c)
    for name, r2 in {2: [('0', 4)], 3: [('0', 9)], 4: [('0', 4), ('2', 4)]}[upscale]:
        keep(f'upsample.{name}', r2 * c, c)
    cut['conv_last.weight'] = state['conv_last.weight'][:, :c]
    cut['conv_last.bias'] = state['conv_last.bias']
    return cut


@pytest.mark.parametrize('family, upscale, width', [('EDSR', 2, 0.25), ('EDSR', 3, 0.5), ('EDSR', 4, 0.25),
                                                    ('EDSR', 4, 0.75), ('RCAN', 2, 0.25), ('RCAN', 3, 0.5),
                                                    ('RCAN', 4, 0.25)])
def test_student_slice_is_a_plain_network_equal_to_the_slimmed_forward(family, upscale, width):
    net, options = slimmable(family, upscale, width)
    student_state = net.student_state_dict()
    c = int(16 * width)
    assert not differing_tensors(student_state, slice_by_hand(net.state_dict(), family, c, upscale))
    assert net.student_options(options) == {'type': family, **FAMILIES[family][1](upscale, num_feat=c)}
    student = build_network(net.student_options(options))
    student.load_state_dict(student_state)  # strict
    x = fixed(2, 3, 5, 6, seed=1, dtype=torch.float32).sigmoid()
    teacher_out, student_out = net(x, width=(1.0, width))
    assert torch.allclose(student_out, student(x), atol=1e-6)
    assert torch.equal(student_out, net(x, width=width)) and torch.equal(teacher_out, net(x))


@pytest.mark.parametrize('family, width, message', [
    ('EDSR', 0.3, r'^KDSlimmableEDSR: width 0.3 must be in \(0, 1\] and keep whole channels of 16 \(got 4.8\)$'),
    ('EDSR', 1.5, r'^KDSlimmableEDSR: width 1.5 must be in \(0, 1\]'),
    ('RCAN', 0.125, r'^KDSlimmableRCAN: width 0.125 must be in \(0, 1\] and keep whole channels of 4 \(got 0.5\)$'),
], ids=['edsr channels', 'wider than the network', 'rcan squeeze'])
def test_a_width_that_splits_no_whole_channels_is_refused(family, width, message):
    with pytest.raises(ValueError, match=message):
        slimmable(family, 2, width)


# ------------------------------------------------------------------------------------------------ loss
def distance_by_loop(x, y, distance):
    """d over the whole batch of x (B, ...) and y (B, ...): the mean |x - y| (l1) or the root mean (x - y)² (l2)."""
    values = [(a - b) for a, b in zip(x.flatten().tolist(), y.flatten().tolist())]
    if distance == 'l1':
        return sum(abs(v) for v in values) / len(values)
    return (sum(v * v for v in values) / len(values))**0.5


def csd_loss_by_loop(anchors, positives, negatives, layer_weights, distance, eps, loss_weight):
    """L_CL printed: per layer i, d(S, T) / (Σ_k d(S, N_k) + eps), N_k set beside every sample of the batch."""
    total = 0.0
    for weight, anchor, positive, negative in zip(layer_weights, anchors, positives, negatives):
        d_neg = sum(distance_by_loop(anchor, negative[k].expand_as(anchor), distance) for k in range(len(negative)))
        total += weight * distance_by_loop(anchor, positive, distance) / (d_neg + eps)
    return loss_weight * total


def authors_l1_loss(anchors, positives, negatives, layer_weights, eps, loss_weight):
    """The authors' ContrastLoss.L1_forward, restated: negatives repeated over the batch, |n - s| summed over the
    negatives, then averaged."""
    total = 0.0
    for weight, s, t, n in zip(layer_weights, anchors, positives, negatives):
        repeated = n.unsqueeze(1).repeat(1, s.shape[0], 1, 1, 1)  # (K, B, C, H, W)
        total += weight * (t - s).abs().mean() / ((repeated - s).abs().sum(0).mean() + eps)
    return loss_weight * total


def layer_features(seed, batch, negatives, shapes=((4, 6, 6), (8, 3, 3))):
    anchors = [fixed(batch, *shape, seed=seed + i) for i, shape in enumerate(shapes)]
    positives = [fixed(batch, *shape, seed=seed + 10 + i) for i, shape in enumerate(shapes)]
    negative_sets = [fixed(negatives, *shape, seed=seed + 20 + i) for i, shape in enumerate(shapes)]
    return anchors, positives, negative_sets


@pytest.mark.parametrize('layer_weights, distance, eps, loss_weight, negatives', [
    ([1 / 32, 1.0], 'l1', 1e-7, 200.0, 3),
    ([0.5, 0.25], 'l2', 0.5, 1.0, 2),
    ([1.0, 2.0], 'l1', 0.5, 1.0, 1),
    ([0.25, 1.0], 'l2', 1e-7, 200.0, 4),
], ids=['csd defaults', 'l2, large eps', 'l1, one negative', 'l2, csd weight'])
def test_contrastive_loss_equals_the_loop_definition(layer_weights, distance, eps, loss_weight, negatives):
    anchors, positives, negative_sets = layer_features(seed=1, batch=3, negatives=negatives)
    criterion = loss('KDCSDContrastiveLoss', layer_weights=layer_weights, distance=distance, eps=eps,
                     loss_weight=loss_weight)
    value = criterion(anchors, positives, negative_sets).item()
    assert value == pytest.approx(
        csd_loss_by_loop(anchors, positives, negative_sets, layer_weights, distance, eps, loss_weight), rel=1e-9)
    if distance == 'l1':
        assert value == pytest.approx(
            authors_l1_loss(anchors, positives, negative_sets, layer_weights, eps, loss_weight).item(), rel=1e-9)


def test_contrastive_loss_refuses_unequal_layer_lists():
    anchors, positives, negative_sets = layer_features(seed=1, batch=2, negatives=2)
    with pytest.raises(ValueError, match='3 layer_weights but 2 anchor, 2 positive and 2 negative feature layers'):
        loss('KDCSDContrastiveLoss', layer_weights=[1, 1, 1])(anchors, positives, negative_sets)


# ------------------------------------------------------------------------------------------------ model
def csd_opt(tmp_path, root, option='csd_edsr_x2.yml'):
    opt = load_option(os.path.join(OPTIONS, option))
    opt['network_g']['num_block'] = 2
    opt['network_vgg']['layer_names'] = VGG_LAYERS
    opt['train']['contrastive_opt']['layer_weights'] = [0.5, 1.0]
    return shrink_option(opt, root, str(tmp_path), 'csd')


def model_from(opt, tmp_path, name='exp'):
    return build_model_from(opt, str(tmp_path / name))


def gradient_outside_slice(net, c, upscale=2):
    """The largest |grad| of each parameter outside the student slice (zero where only the slice trained)."""
    state = {name: p.grad for name, p in net.named_parameters()}
    inside = slice_by_hand(state, 'EDSR', c, upscale)
    outside = {}
    for name, grad in state.items():
        masked = grad.clone()
        index = tuple(slice(0, n) for n in inside[name].shape)
        masked[index] = 0
        outside[name] = masked.abs().max().item()
    return outside


def test_one_step_trains_the_whole_super_network_and_no_vgg_weight(tmp_path):
    model = model_from(csd_opt(tmp_path, '/nonexistent'), tmp_path)
    vgg = model.frozen['vgg']
    before = snapshot(vgg)
    model.feed_data(random_batch(scale=2, size=8))
    model.optimize_parameters(1)
    assert list(model.log_dict) == ['l_pix', 'l_pix_t', 'l_csd']
    assert all(p.grad is not None and p.grad.any() for p in model.net_g.parameters())
    assert all(p.grad is None and not p.requires_grad for p in vgg.parameters()) and not vgg.training
    assert model.teachers == {} and list(model.frozen) == ['vgg']
    assert {id(p) for group in model.optimizer_g.param_groups for p in group['params']} == \
        {id(p) for p in model.net_g.parameters()}
    model.optimize_parameters(2)
    assert not differing_tensors(snapshot(vgg), before)


@pytest.mark.parametrize('teacher_term, detach_positive, trains_outside', [
    (False, True, False), (False, False, True), (True, True, True)],
    ids=['student terms only', 'L_CL through the positive', "the teacher's L1"])
def test_only_the_teacher_width_terms_reach_weights_outside_the_slice(tmp_path, teacher_term, detach_positive,
                                                                      trains_outside):
    opt = csd_opt(tmp_path, '/nonexistent')
    opt['train']['detach_positive'] = detach_positive
    if not teacher_term:
        opt['train'].pop('teacher_pixel_opt')
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=2, size=8))
    model.optimize_parameters(1)
    outside = gradient_outside_slice(model.net_g, c=4)
    assert (max(outside.values()) > 0) == trains_outside, outside


@pytest.mark.parametrize('detach_positive, layer_weights, loss_weight',
                         [(True, [0.5, 1.0], 200), (False, [1.0, 0.25], 3)])
def test_the_terms_are_both_widths_l1_and_l_cl_on_vgg_features(tmp_path, detach_positive, layer_weights,
                                                               loss_weight):
    opt = csd_opt(tmp_path, '/nonexistent')
    opt['train']['detach_positive'] = detach_positive
    opt['train']['teacher_pixel_opt']['loss_weight'] = 0.5
    opt['train']['contrastive_opt'].update(layer_weights=layer_weights, loss_weight=loss_weight)
    model = model_from(opt, tmp_path)
    batch = random_batch(seed=3, scale=2, batch=2, size=8)
    model.feed_data(batch)
    model.forward_networks()
    losses = model.compute_losses(1)
    supernet = model.get_bare_model(model.net_g)
    teacher = EDSR(**edsr_opt(2, num_block=2))
    teacher.load_state_dict(supernet.state_dict())
    student = EDSR(**edsr_opt(2, num_feat=4, num_block=2))
    student.load_state_dict(supernet.student_state_dict())
    with torch.no_grad():
        s, t = student(batch['lq']), teacher(batch['lq'])
        negatives = F.interpolate(batch['lq'][:2], scale_factor=2, mode='bicubic', align_corners=False)
        features = [model.frozen['vgg'](x) for x in (s, t, negatives)]
    assert losses['l_pix'].item() == pytest.approx(mae_by_loop(s, batch['gt']), rel=1e-5)
    assert losses['l_pix_t'].item() == pytest.approx(0.5 * mae_by_loop(t, batch['gt']), rel=1e-5)
    anchors, positives, negative_sets = ([f[name].double() for name in VGG_LAYERS] for f in features)
    expected = csd_loss_by_loop(anchors, positives, negative_sets, layer_weights, 'l1', 1e-7, loss_weight)
    assert losses['l_csd'].item() == pytest.approx(expected, rel=1e-4)


def test_the_checkpoint_loads_the_student_in_plain_srmodel_and_the_super_network_back(tmp_path):
    opt = csd_opt(tmp_path, '/nonexistent')
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=2, size=8))
    model.optimize_parameters(1)
    model.save(0, 1)
    path = os.path.join(model.opt['path']['models'], 'net_g_1.pth')
    checkpoint = torch.load(path, weights_only=True)
    assert sorted(checkpoint) == ['params', 'supernet_params']
    supernet = model.get_bare_model(model.net_g)
    assert not differing_tensors(checkpoint['supernet_params'], supernet.state_dict())

    test_opt = {'name': 'student', 'model_type': 'SRModel', 'scale': 2, 'num_gpu': 0,
                'network_g': supernet.student_options(opt['network_g']),
                'path': {'pretrain_network_g': path, 'param_key_g': 'params', 'strict_load_g': True}}
    plain = build_model_from(test_opt, str(tmp_path / 'plain'), is_train=False)
    batch = random_batch(seed=5, scale=2, size=8)
    plain.feed_data(batch)
    plain.test()
    model.feed_data(batch)
    model.test()  # validation runs the student slice
    assert torch.allclose(plain.output, model.output, atol=1e-6)
    assert model.net_g.training

    again = copy.deepcopy(opt)
    again['path']['pretrain_network_g'] = path  # a CSD checkpoint: the super-network is read from supernet_params
    assert not differing_tensors(model_from(again, tmp_path, 'again').net_g.state_dict(), supernet.state_dict())


def test_the_super_network_starts_from_a_plain_edsr_teacher_file(tmp_path):
    opt = csd_opt(tmp_path, '/nonexistent')
    teacher = torch.load(opt['path']['pretrain_network_g'], weights_only=True)['params']
    assert list(teacher) == list(EDSR(**edsr_opt(2, num_block=2)).state_dict())  # BasicSR's EDSR layout
    assert not differing_tensors(model_from(opt, tmp_path).net_g.state_dict(), teacher)


def with_change(opt, change):
    opt = copy.deepcopy(opt)
    change(opt)
    return opt


@pytest.mark.parametrize('change, message', [
    (lambda o: o.update(network_g=EDSR_OPTIONS),
     r'^network_g\.type = EDSR: KDCSDModel trains a channel-splitting super-network'),
    (lambda o: o['path'].update(pretrain_network_g=None), r'^path\.pretrain_network_g is not set: CSD starts'),
    (lambda o: o['train'].pop('pixel_opt'), r'^KDCSDModel needs train\.pixel_opt'),
    (lambda o: o['train'].update(num_negatives=3), r'^train\.num_negatives = 3: L_CL needs a whole number of '
     r'negatives from 1 to datasets\.train\.batch_size_per_gpu \(2\)'),
    (lambda o: o['train'].update(num_negatives=0), r'^train\.num_negatives = 0'),
    (lambda o: o['train'].update(detach_positive='yes'), r"^train\.detach_positive = 'yes': use true or false"),
    (lambda o: o['train'].update(from_scratch=1), r"^train\.from_scratch = 1: use true or false"),
    (lambda o: o['train']['contrastive_opt'].update(layer_weights=[1.0]),
     r'^train\.contrastive_opt\.layer_weights has 1 weights but network_vgg\.layer_names 2 layers'),
    (lambda o: o['train']['contrastive_opt'].update(distance='cos'), r"^train\.contrastive_opt: distance must be "),
    (lambda o: o['train'].update(contrastive_opt={'type': 'L1Loss'}),
     r'^train\.contrastive_opt\.type = L1Loss: KDCSDModel takes KDCSDContrastiveLoss there'),
    (lambda o: o['train'].pop('contrastive_opt'), r'^network_vgg is set but train\.contrastive_opt is not'),
    (lambda o: o.update(network_t=dict(o['network_g'])), r"^KDCSDModel does not use \['network_t'\]"),
], ids=['plain edsr', 'no teacher to start from', 'no pixel loss', 'more negatives than the batch', 'no negative',
        'detach not a boolean', 'from_scratch not a boolean', 'a weight per vgg layer', 'unknown distance',
        'another loss kind', 'vgg without l_cl', 'a teacher network'])
def test_a_wrong_configuration_is_refused_naming_the_key(tmp_path, change, message):
    opt = with_change(csd_opt(tmp_path, '/nonexistent'), change)
    with pytest.raises(ValueError, match=message):
        model_from(opt, tmp_path)


def test_from_scratch_starts_without_a_teacher_file(tmp_path):
    opt = csd_opt(tmp_path, '/nonexistent')
    opt['path']['pretrain_network_g'] = None
    opt['train']['from_scratch'] = True
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=2, size=8))
    model.optimize_parameters(1)


def test_csd_without_l_cl_needs_no_vgg(tmp_path):
    opt = csd_opt(tmp_path, '/nonexistent')
    opt['train'].pop('contrastive_opt')
    opt.pop('network_vgg')
    opt['path']['ignore_resume_networks'] = []
    model = model_from(opt, tmp_path)
    model.feed_data(random_batch(scale=2, size=8))
    model.optimize_parameters(1)
    assert list(model.log_dict) == ['l_pix', 'l_pix_t'] and model.frozen == {} and model.floor_forwards() == []


def test_train_py_stops_on_a_misspelt_option_before_the_first_step(demo_root, tmp_path):
    opt = csd_opt(tmp_path, demo_root)
    opt['train']['num_negative'] = opt['train'].pop('num_negatives')
    result = run_train(opt, str(tmp_path), check=False)
    assert result.returncode != 0 and training_steps(result) == {}
    assert 'train.num_negative (did you mean num_negatives?)' in result.stdout + result.stderr


def test_auto_resume_restores_the_super_network_and_optimiser(demo_root, tmp_path):
    opt = csd_opt(tmp_path, demo_root)
    opt['model_type'] = 'KDRecordingCSDModel'
    opt['train']['ema_decay'] = 0.9  # the EMA super-network resumes from supernet_params_ema
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert not differing_tensors(resumed['networks']['g'], at_2['g']), 'the super-network did not resume'
    assert list(resumed['networks']) == ['g']  # CSD adds no trainable network
    assert_optimisers_resumed(saved, resumed)
    models = tmp_path / 'experiments' / 'csd' / 'models'
    assert sorted(path.name for path in models.iterdir()) == ['net_g_2.pth', 'net_g_latest.pth']  # no VGG
    at_2_file = torch.load(models / 'net_g_2.pth', weights_only=True)
    assert sorted(at_2_file) == ['params', 'params_ema', 'supernet_params', 'supernet_params_ema']
    assert resumed['ema'] is not None and not differing_tensors(resumed['ema'], at_2_file['supernet_params_ema'])
