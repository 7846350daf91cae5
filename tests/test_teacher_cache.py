"""Cached teacher targets (datasets_prep/cache_teacher_outputs.py, KDCachedTargetDataset, train.teacher_cache): the
cached target equals the on-the-fly teacher output away from patch borders, crops and augmentations stay aligned, a
mismatched cache is refused, an interrupted build resumes, and two CPU ranks train from the cache."""
import copy
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset

from conftest import (OPTIONS, build_model_from, differing_tensors, load_option, random_batch, save_random_weights,
                      shrink_option, tiny_logits_opt, two_rank_run)
from datasets_prep.cache_teacher_outputs import cache_targets
from kd_models.kd_cached_target_dataset import CACHE_MANIFEST, read_cached_target

RECEPTIVE_RADIUS = 8  # LQ pixels: the shrunk EDSR teacher's 3x3 convolutions before the upsampler (1 + 2x3 + 1)


def cached_opt(opt, folder):
    """``opt`` training from the cache in ``folder``."""
    opt = copy.deepcopy(opt)
    opt['datasets']['train'].update(type='KDCachedTargetDataset', dataroot_target=str(folder))
    opt['train']['teacher_cache'] = str(folder)
    return opt


@pytest.fixture(scope='module')
def built_cache(demo_root, tmp_path_factory):
    """The shrunk Logits KD options (EDSR x2, 3-block random teacher) and their cache of the 2 demo training images,
    in LQ tiles of 128 overlapping by 2 x the receptive radius (so the tiles equal whole-image forwards)."""
    root = tmp_path_factory.mktemp('cache')
    opt = tiny_logits_opt(demo_root, root)
    written = cache_targets(opt, str(root / 'targets'), tile=128, overlap=2 * RECEPTIVE_RADIUS,
                            device=torch.device('cpu'))
    assert written == 2
    return opt, root / 'targets'


@pytest.fixture
def cache(built_cache, tmp_path):
    """A copy of the built cache that a test may change."""
    opt, folder = built_cache
    shutil.copytree(folder, tmp_path / 'targets')
    return copy.deepcopy(opt), tmp_path / 'targets'


def test_cached_target_equals_the_teachers_output_in_the_patch_interior(cache, tmp_path):
    opt, folder = cache
    train = copy.deepcopy(cached_opt(opt, folder)['datasets']['train'])
    train.update(phase='train', scale=2, gt_size=96, use_hflip=False, use_rot=False)
    dataset = build_dataset(train)
    model = build_model_from(cached_opt(opt, folder), str(tmp_path / 'exp'))
    margin = 2 * (RECEPTIVE_RADIUS + 1)  # HR pixels of the patch border that the whole image's context changes
    for index in range(len(dataset)):
        torch.manual_seed(index)
        sample = dataset[index]
        with torch.no_grad():
            live = model.teachers['t'](sample['lq'][None])[0]
        interior = (slice(None), slice(margin, -margin), slice(margin, -margin))
        difference = (sample['target'] - live.clamp(0, 1))[interior].abs().max().item()
        assert difference <= 0.5 / 65535 + 1e-6, difference  # 16-bit rounding, float32 arithmetic
        border = (sample['target'] - live.clamp(0, 1)).abs().max().item()
        assert border > 1e-3  # at the patch border the whole-image target sees more context


def test_model_takes_the_target_from_the_batch_and_runs_no_teacher(cache, tmp_path):
    opt, folder = cache
    model = build_model_from(cached_opt(opt, folder), str(tmp_path / 'exp'))
    calls = []
    model.teachers['t'].register_forward_hook(lambda *args: calls.append(1))
    batch = random_batch()
    batch['target'] = torch.rand_like(batch['gt'])
    model.feed_data(batch)
    with torch.no_grad():
        student = model.net_g(batch['lq'])
    model.optimize_parameters(1)
    assert calls == [] and model.floor_forwards() == []
    assert model.log_dict['l_kd'] == pytest.approx((student - batch['target']).abs().mean().item(), rel=1e-5)


def paint_coordinates(root, name, size):
    """A GT image whose pixel (y, x) holds its 2x2 block's coordinates (y // 2, x // 2, 0) and its x2 LQ image
    holding (i, j, 0) at (i, j): after any crop, flip or rotation, LQ (i, j) must sit over GT block (i, j)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    gt = np.stack([np.zeros_like(yy), xx // 2, yy // 2], -1).astype(np.uint8)  # BGR: R = block row, G = block col
    for sub, image in (('gt', gt), ('lq', gt[::2, ::2])):
        os.makedirs(root / sub, exist_ok=True)
        cv2.imwrite(str(root / sub / name), image)
    return gt


def test_crops_and_augmentations_stay_aligned(tmp_path):
    folder = tmp_path / 'targets'
    folder.mkdir()
    for k, size in enumerate([(120, 160), (100, 90)]):
        gt = paint_coordinates(tmp_path, f'img{k}.png', size)
        cv2.imwrite(str(folder / f'img{k}.png'), gt.astype(np.uint16) * 257)  # the target: the GT, in 16 bits
    (folder / CACHE_MANIFEST).write_text('{}')
    dataset = build_dataset({
        'name': 'painted', 'type': 'KDCachedTargetDataset', 'phase': 'train', 'scale': 2, 'gt_size': 32,
        'dataroot_gt': str(tmp_path / 'gt'), 'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_target': str(folder),
        'io_backend': {'type': 'disk'}, 'use_hflip': True, 'use_rot': True
    })
    seen = set()
    for draw in range(40):
        sample = dataset[draw % 2]
        assert torch.equal(sample['target'] * 65535 / 257, sample['gt'] * 255)
        blocks = (sample['gt'] * 255).round()[:2]  # (R, G) = (block row, block col)
        lq = (sample['lq'] * 255).round()[:2]
        for a in (0, 1):
            for b in (0, 1):
                assert torch.equal(blocks[:, a::2, b::2], lq)
        seen.add((blocks[0, 0, 0] > blocks[0, -1, 0]).item())  # flipped upside down or not
    assert seen == {True, False}, 'flips and rotations were drawn'


def test_a_mismatched_cache_is_refused_naming_what_differs(cache, tmp_path):
    opt, folder = cache
    other_teacher = cached_opt(opt, folder)
    other_teacher['path']['pretrain_network_t'] = save_random_weights(opt['network_t'], str(tmp_path / 'o.pth'), 5)
    with pytest.raises(ValueError, match=r'was built for other options \(frozen: '):
        build_model_from(other_teacher, str(tmp_path / 'exp'))
    other_data = cached_opt(opt, folder)
    other_data['datasets']['train']['dataroot_lq'] = other_data['datasets']['val']['dataroot_lq']
    with pytest.raises(ValueError, match='dataroot_lq: cache'):
        build_model_from(other_data, str(tmp_path / 'exp2'))
    other_folder = cached_opt(opt, folder)
    other_folder['train']['teacher_cache'] = str(tmp_path / 'elsewhere')
    with pytest.raises(ValueError, match='needs datasets.train.type: KDCachedTargetDataset with dataroot_target'):
        build_model_from(other_folder, str(tmp_path / 'exp3'))
    feature = cached_opt(opt, folder)
    feature['model_type'] = 'KDFeatureModel'
    feature['train'].update(feature_taps={'network_g': ['body.0'], 'network_t': ['body.0']},
                            feature_opt={'type': 'KDAttentionTransferLoss'})
    with pytest.raises(ValueError, match='KDFeatureModel cannot take its targets from a cache'):
        build_model_from(feature, str(tmp_path / 'exp4'))
    with pytest.raises(ValueError, match='holds targets of other options'):  # the builder refuses it too
        cache_targets(other_teacher, str(folder), tile=64, overlap=16, device=torch.device('cpu'))


def test_an_interrupted_build_resumes(cache):
    opt, folder = cache
    targets = sorted(name for name in os.listdir(folder) if name.endswith('.png'))
    kept = read_cached_target(str(folder / targets[0]))
    os.remove(folder / targets[1])  # the run was stopped before writing the second target
    (folder / (targets[1] + '.tmp')).write_bytes(b'half a png')  # ... while writing it
    assert cache_targets(opt, str(folder), tile=64, overlap=16, device=torch.device('cpu')) == 1
    assert sorted(name for name in os.listdir(folder) if name.endswith('.png')) == targets
    assert np.array_equal(read_cached_target(str(folder / targets[0])), kept)
    with open(folder / CACHE_MANIFEST) as f:
        assert json.load(f)['target'] == 'KDLogitsModel.frozen_target'


def test_two_cpu_ranks_train_from_the_cache(cache, tmp_path):
    opt, folder = cache
    opt = cached_opt(opt, folder)
    opt.update(name='ddp_cache', model_type='KDRecordingLogitsModel')
    _, final, _ = two_rank_run(opt, str(tmp_path))
    assert not differing_tensors(final[0]['g'], final[1]['g'])


@pytest.mark.parametrize('option', ['mtkd_edsr_x2.yml', 'dckd_rcan_x2.yml'])
def test_mtkd_stage_two_and_dckd_take_their_target_from_the_cache(option, demo_root, tmp_path):
    """MTKD stage 2: the cache holds I_MT, and neither the teachers nor the aggregator run; DCKD: the cache holds the
    positive (the teacher's output), and the teacher does not run (the history model and the VQGAN still do)."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, option)), demo_root, str(tmp_path), 'cached')
    model = build_model_from(opt, str(tmp_path / 'plain'))
    lq = random_batch()['lq']
    with torch.no_grad():
        expected = model.frozen_target(lq)
    (tmp_path / 'targets').mkdir()
    (tmp_path / 'targets' / CACHE_MANIFEST).write_text(json.dumps(model.cache_manifest()))
    cached = build_model_from(cached_opt(opt, tmp_path / 'targets'), str(tmp_path / 'exp'))
    frozen = {**cached.teachers, **({'agg': cached.frozen['agg']} if 'agg' in cached.frozen else {})}
    calls = []
    for net in frozen.values():
        net.register_forward_hook(lambda *args: calls.append(1))
    batch = dict(random_batch(), target=expected)
    cached.feed_data(batch)
    term, loss = ('l_dis', cached.cri_dis) if 'agg' in frozen else ('l_kd', cached.cri_kd)
    with torch.no_grad():
        value = loss(cached.net_g(batch['lq']), expected).item()
    cached.optimize_parameters(1)
    assert calls == []
    assert cached.log_dict[term] == pytest.approx(value, rel=1e-5)
    assert not any(name in frozen for name, _ in cached.floor_forwards())
