"""DUKD: the data upcycling of ``kd_models/kd_data_upcycling.py`` against direct computations (GT tiles cut by hand,
BasicSR's own per-image MATLAB ``imresize``), the terms ``KDDUKDModel`` assembles recomputed sample by sample, where
gradients go, configuration errors named by their key, DCKD* with the upcycled term, and --auto_resume (DDP: in
test_distributed.py; the BasicSR fork: test_basicsr_fork.py; each upcycled term's gradient against finite
differences: test_distillation_paths.py)."""
import os

import pytest
import torch
from basicsr.utils.matlab_functions import imresize

from conftest import (OPTIONS, assert_optimisers_resumed, build_model_from, differing_tensors, interrupted_and_resumed,
                      load_option, random_batch, shrink_option, snapshot)
from kd_models.kd_data_upcycling import DataUpcycling, draw_zoom_in_tiles, zoom_in_tiles, zoom_out


# ------------------------------------------------------------------------------------------------------- upcycling
@pytest.mark.parametrize('scale, tiles', [(2, [3, 0]), (3, [4]), (3, [8, 1, 5])])
def test_zoom_in_cuts_the_drawn_tiles_of_the_gt_grid(scale, tiles):
    side = 4  # the LR patch's side
    gt = torch.arange(2 * 3 * (side * scale) ** 2, dtype=torch.float64).reshape(2, 3, side * scale, side * scale)
    expected = []
    for tile in tiles:  # tile-major, then the batch
        row, column = divmod(tile, scale)
        for sample in range(gt.shape[0]):
            expected.append(gt[sample, :, row * side:(row + 1) * side, column * side:(column + 1) * side])
    assert torch.equal(zoom_in_tiles(gt, torch.tensor(tiles), scale), torch.stack(expected))


@pytest.mark.parametrize('scale, count', [(2, 1), (2, 4), (4, 3)])
def test_zoom_in_draws_distinct_tiles_of_the_grid(scale, count):
    for seed in range(5):
        torch.manual_seed(seed)
        tiles = draw_zoom_in_tiles(scale, count).tolist()
        assert len(tiles) == len(set(tiles)) == count and all(0 <= tile < scale * scale for tile in tiles)


@pytest.mark.parametrize('scale, height, width', [(2, 16, 24), (3, 24, 12), (4, 48, 48), (3, 17, 16)])
def test_zoom_out_is_matlab_bicubic_of_each_image(scale, height, width):
    lq = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(scale))
    kept = lq[..., :height - height % scale, :width - width % scale]  # a side that is no multiple loses its end
    expected = torch.stack([imresize(image, 1 / scale) for image in kept])  # BasicSR's loop over rows and channels
    result = zoom_out(lq, scale)
    assert result.shape == (3, 3, height // scale, width // scale)
    assert torch.allclose(result, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize('settings, message', [
    ({'zoom_in_tiles': 5}, r'^train\.upcycling_opt\.zoom_in_tiles = 5: .* \[0, 4\]'),
    ({'zoom_in_tiles': True}, r'^train\.upcycling_opt\.zoom_in_tiles = True'),
    ({'zoom_out': 'yes'}, r"^train\.upcycling_opt\.zoom_out = 'yes': must be true or false"),
    ({'prob': 1.5}, r'^train\.upcycling_opt\.prob = 1\.5: must be a probability'),
    ({'zoom_in_tiles': 0}, r'^train\.upcycling_opt: zoom_in_tiles = 0 and zoom_out = false upcycle nothing'),
], ids=['too many tiles', 'a bool count', 'zoom_out not a bool', 'prob above 1', 'nothing'])
def test_wrong_upcycling_settings_name_their_key(settings, message):
    with pytest.raises(ValueError, match=message):
        DataUpcycling({'type': 'L1Loss', **settings}, 2)


def test_upcycling_needs_an_sr_scale():
    with pytest.raises(ValueError, match=r'^train\.upcycling_opt: .* integer > 1 \(scale = 1\)'):
        DataUpcycling({'type': 'L1Loss'}, 1)


# ------------------------------------------------------------------------------------------------------- model
def dukd_opt(tmp_path, option='dukd_edsr_x2.yml', **upcycling):
    opt = load_option(os.path.join(OPTIONS, option))
    opt['network_g']['num_block'], opt['network_t']['num_block'] = 1, 2
    opt['train']['upcycling_opt'].update(upcycling)
    return shrink_option(opt, '/nonexistent', str(tmp_path), 'dukd')


def model_from(opt, tmp_path):
    return build_model_from(opt, str(tmp_path / 'exp'))


def by_hand(images, ops, undo=False):
    """The label-consistency ops of each sample, applied (invert, flip H, flip W, transpose) or undone (reverse)."""
    functions = [lambda x: 1 - x, lambda x: x.flip(-2), lambda x: x.flip(-1), lambda x: x.transpose(-2, -1)]
    out = []
    for image, chosen in zip(images, ops.tolist()):
        for index in (reversed(range(4)) if undo else range(4)):
            if chosen[index]:
                image = functions[index](image)
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize('option, tiles, prob, weight', [('dukd_edsr_x2.yml', 2, 1.0, 1.0),
                                                         ('dukd_rcan_x3.yml', 9, 0.5, 2.5),
                                                         ('dukd_edsr_x4.yml', 3, 0.0, 0.5)])
def test_the_terms_are_recomputed_sample_by_sample(tmp_path, option, tiles, prob, weight):
    opt = dukd_opt(tmp_path, option, zoom_in_tiles=tiles, prob=prob, loss_weight=weight)
    scale, w_pix = opt['scale'], opt['train']['pixel_opt']['loss_weight']
    model = model_from(opt, tmp_path)
    batch = random_batch(seed=4, scale=scale, size=12)
    model.feed_data(batch)
    torch.manual_seed(7)
    model.forward_networks()
    losses = model.compute_losses(1)
    torch.manual_seed(7)  # the tiles are the first draw of the step
    drawn = torch.randperm(scale * scale)[:tiles].tolist()
    side = 12
    zoom_in = torch.stack([batch['gt'][b, :, (t // scale) * side:(t // scale + 1) * side,
                                       (t % scale) * side:(t % scale + 1) * side]
                           for t in drawn for b in range(2)])
    assert torch.equal(model.zoom_in_input, zoom_in)
    ops = model.up_ops
    assert ops.shape == (2 * tiles, 4) and (ops.all() if prob == 1 else not ops.any() if prob == 0 else True)
    if 0 < prob < 1:  # the case where undoing in the order of application would not be the inverse is drawn
        assert (ops[:, 3] & (ops[:, 1] ^ ops[:, 2])).any()
    student, teacher = model.get_bare_model(model.net_g), model.teachers['t']
    with torch.no_grad():
        s_zi = torch.cat([by_hand(student(by_hand(x[None], o[None])), o[None], undo=True)
                          for x, o in zip(zoom_in, ops)])
        t_zi = torch.cat([teacher(x[None]) for x in zoom_in])
        x_zo = torch.stack([imresize(image, 1 / scale) for image in batch['lq']])
        s_zo, t_zo = student(x_zo), teacher(x_zo)
    assert losses['l_up_in'].item() == pytest.approx(weight * (s_zi - t_zi).abs().mean().item(), rel=1e-4)
    assert losses['l_up_out'].item() == pytest.approx(weight * (s_zo - t_zo).abs().mean().item(), rel=1e-4)
    assert losses['l_up_out_pix'].item() == pytest.approx(w_pix * (s_zo - batch['lq']).abs().mean().item(), rel=1e-4)
    with torch.no_grad():
        s_lq, t_lq = student(batch['lq']), teacher(batch['lq'])
    assert losses['l_kd'].item() == pytest.approx((s_lq - t_lq).abs().mean().item(), rel=1e-4)
    assert losses['l_pix'].item() == pytest.approx(w_pix * (s_lq - batch['gt']).abs().mean().item(), rel=1e-4)


def test_without_zoom_out_only_the_zoom_in_term_is_added(tmp_path):
    model = model_from(dukd_opt(tmp_path, 'dukd_swinir_x2.yml'), tmp_path)
    model.feed_data(random_batch(scale=2, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_up_in'}
    assert [name for name, _ in model.floor_forwards()] == ['t']  # LQ and the zoom-in tiles in one forward


def test_zoom_out_alone_adds_only_its_terms(tmp_path):
    model = model_from(dukd_opt(tmp_path, zoom_in_tiles=0), tmp_path)
    model.feed_data(random_batch(scale=2, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_up_out', 'l_up_out_pix'}
    assert [view.shape[0] for view in model.teacher_view_outputs['t']] == [2]  # no zoom-in view


def test_one_step_trains_the_student_only(tmp_path):
    model = model_from(dukd_opt(tmp_path), tmp_path)
    teacher = model.teachers['t']
    before = snapshot(teacher)
    model.feed_data(random_batch(scale=2, size=16))
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_kd', 'l_up_in', 'l_up_out', 'l_up_out_pix'}
    assert all(p.grad is not None and p.grad.any() for p in model.net_g.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert {id(p) for group in model.optimizer_g.param_groups for p in group['params']} == \
        {id(p) for p in model.net_g.parameters()}
    assert not differing_tensors(snapshot(teacher), before)
    assert [name for name, _ in model.floor_forwards()] == ['t', 't']  # LQ + zoom-in tiles, then the zoom-out


def test_a_missing_upcycling_loss_is_refused(tmp_path):
    opt = dukd_opt(tmp_path)
    opt['train'].pop('upcycling_opt')
    with pytest.raises(ValueError, match=r'^KDDUKDModel needs train\.upcycling_opt'):
        model_from(opt, tmp_path)


@pytest.mark.parametrize('change, message', [
    ({'type': 'KDWaveKDLoss'}, r'^train\.upcycling_opt\.type = KDWaveKDLoss: KDDUKDModel takes one of'),
    ({'n_gt_sub': [1]}, r"^train\.upcycling_opt: .*'n_gt_sub'.* \(its own keys: zoom_in_tiles, zoom_out, prob\)"),
    ({'zoom_in_tiles': 9}, r'^train\.upcycling_opt\.zoom_in_tiles = 9: '),
], ids=['another loss kind', 'an unknown key', 'more tiles than the grid'])
def test_a_wrong_upcycling_loss_is_refused_naming_the_key(tmp_path, change, message):
    opt = dukd_opt(tmp_path)
    opt['train']['upcycling_opt'].update(change)
    with pytest.raises(ValueError, match=message):
        model_from(opt, tmp_path)


def test_upcycling_is_refused_with_student_taps(tmp_path):
    opt = dukd_opt(tmp_path)
    opt['train']['feature_taps'] = {'network_g': ['body.0'], 'network_t': ['body.1']}
    with pytest.raises(ValueError, match=r"^train\.upcycling_opt cannot be combined with train\.feature_taps of "
                                         r"\['network_g', 'network_t'\]"):
        model_from(opt, tmp_path)


def test_dckd_star_adds_the_upcycled_term_to_dckd(tmp_path):
    opt = load_option(os.path.join(OPTIONS, 'dckd_star_rcan_x4.yml'))
    opt['network_g']['num_group'], opt['network_t']['num_group'] = 1, 1
    opt['network_g']['num_block'], opt['network_t']['num_block'] = 1, 1
    model = model_from(shrink_option(opt, '/nonexistent', str(tmp_path), 'dckd_star'), tmp_path)
    model.feed_data(random_batch(scale=4, size=16))
    model.optimize_parameters(1)
    assert {'l_kd', 'l_lc', 'l_dcl', 'l_ce', 'l_up_in'} <= set(model.log_dict)
    # the teacher's views: LQ, its label-consistency copy, then the zoom-in tiles, in one forward
    assert [view.shape[0] for view in model.teacher_view_outputs['t']] == [2, 2, 2]


def test_auto_resume_restores_student_and_optimiser(demo_root, tmp_path):
    opt = load_option(os.path.join(OPTIONS, 'dukd_edsr_x2.yml'))
    opt['network_g']['num_block'], opt['network_t']['num_block'] = 1, 2
    opt = shrink_option(opt, demo_root, str(tmp_path), 'dukd')
    opt['model_type'] = 'KDRecordingDUKDModel'
    opt.pop('val')
    saved, resumed, at_2, _ = interrupted_and_resumed(opt, str(tmp_path))
    assert not differing_tensors(resumed['networks']['g'], at_2['g']), 'net_g did not resume'
    assert list(resumed['networks']) == ['g']  # DUKD adds no network and keeps no state besides BasicSR's
    assert_optimisers_resumed(saved, resumed)
    assert saved['kd']['method'] == {}
    teacher = torch.load(opt['path']['pretrain_network_t'], weights_only=True)['params']
    assert not differing_tensors(resumed['teachers']['t'], teacher)
