"""Restormer's progressive learning (``train.progressive_patches``) and the padding of pairs smaller than the patch
(``KDPairedImageDataset``'s ``pad_to_gt_size``): the schedule of DCKD's appendix, one aligned window and one sample
subset per step for LQ, GT and a cached target, OpenCV's reflection padding, bad schedules refused before step 1,
and train.py on pairs smaller than the last patch, stopped and resumed inside the schedule."""
import copy
import glob
import os

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset

from basicsr_kd.option_keys import UnknownOptionKey, check_option_keys
from basicsr_kd.preflight import check_disk_patch_size
from conftest import OPTIONS, build_model_from, interrupted_and_resumed, load_option, shrink_option
from kd_models.kd_iteration_schedule import IterationSchedule
from kd_models.kd_paired_image_dataset import pad_to_patch

DCKD_ROWS = [[92000, 128, 64], [156000, 160, 40], [204000, 192, 32], [240000, 256, 16], [276000, 320, 8],
             [300000, 384, 8]]


def test_the_schedule_of_dckds_appendix():
    """DCKD App.: 128² x 64 first; (160², 40), (192², 32), (256², 16), (320², 8), (384², 8) from 92k, 156k, 204k,
    240k, 276k (the official Restormer changes after those iterations); the last row holds after 300k."""
    schedule = IterationSchedule(DCKD_ROWS, 'rows', names=('gt_size', 'batch'), example='')
    expected = {1: (128, 64), 92000: (128, 64), 92001: (160, 40), 156001: (192, 32), 204001: (256, 16),
                240000: (256, 16), 240001: (320, 8), 276001: (384, 8), 300000: (384, 8), 400000: (384, 8)}
    assert {t: schedule.values(t) for t in expected} == expected
    for name in ('logits_restormer_derain', 'dckd_restormer_derain', 'dckd_restormer_deblur'):
        opt = load_option(os.path.join(OPTIONS, f'{name}.yml'))
        assert opt['train']['progressive_patches'] == DCKD_ROWS, name
        assert (opt['datasets']['train']['gt_size'], opt['datasets']['train']['batch_size_per_gpu']) == (384, 64)


@pytest.fixture
def progressive_opt(logits_opt):
    """Shrunk Logits KD x2: the loader gives 32² GT x 4, the schedule 16² x 1, 24² x 3, then 32² x 4."""
    opt = copy.deepcopy(logits_opt)
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=4)
    opt['train']['progressive_patches'] = [[1, 16, 1], [2, 24, 3], [3, 32, 4]]
    return opt


def aligned_batch():
    """LQ 16² x 4 and its GT as the nearest-neighbour x2 of LQ, a cached target GT + 1, and the samples' paths."""
    lq = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gt = lq.repeat_interleave(2, -1).repeat_interleave(2, -2)
    return {'lq': lq, 'gt': gt, 'target': gt + 1, 'lq_path': [f'lq{i}' for i in range(4)],
            'gt_path': [f'gt{i}' for i in range(4)]}


def windows_of(cropped, batch):
    """(sample, top, left) of each cropped LQ in the full batch, found by searching every sample and offset."""
    size = cropped.shape[-1]
    found = []
    for image in cropped:
        found += [(i, top, left) for i in range(batch.shape[0]) for top in range(batch.shape[-2] - size + 1)
                  for left in range(batch.shape[-1] - size + 1)
                  if torch.equal(batch[i, :, top:top + size, left:left + size], image)]
    return found


def test_each_step_crops_lq_gt_and_target_to_one_aligned_window_of_a_sample_subset(progressive_opt, tmp_path):
    model = build_model_from(progressive_opt, str(tmp_path / 'exp'))
    batch, fed = aligned_batch(), []
    feed_data = model.feed_data
    model.feed_data = lambda data: fed.append(data) or feed_data(data)
    model.feed_data(batch)
    for iteration, (gt_size, count) in zip((1, 2, 3, 9), ((16, 1), (24, 3), (32, 4), (32, 4))):
        model.optimize_parameters(iteration)  # one feed, several steps: each crops the loader's batch
        lq_size = gt_size // 2
        assert model.lq.shape == (count, 3, lq_size, lq_size) and model.output.shape == (count, 3, gt_size, gt_size)
        windows = windows_of(model.lq, batch['lq'])
        assert len(windows) == count and len({i for i, _, _ in windows}) == count  # distinct samples, each once
        assert len({(top, left) for _, top, left in windows}) == 1  # one window for the whole step
        samples = [i for i, _, _ in windows]
        assert fed[-1]['lq_path'] == [f'lq{i}' for i in samples] and fed[-1]['gt_path'] == [f'gt{i}' for i in samples]
        assert torch.equal(model.gt, model.lq.repeat_interleave(2, -1).repeat_interleave(2, -2))
        assert torch.equal(model.cached_target, model.gt + 1)


def test_a_method_derives_its_inputs_from_the_cropped_batch(restoration_root, tmp_path):
    """SKD's feed_data keeps the [0, 1] LQ for its teacher: it must be the cropped one."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'skd_restormer_derain.yml')), restoration_root,
                        str(tmp_path), 'skd')
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2)
    opt['train']['progressive_patches'] = [[1, 16, 1], [2, 32, 2]]
    model = build_model_from(opt, str(tmp_path / 'exp'))
    full = {'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)}
    model.feed_data(full)
    model.optimize_parameters(1)
    assert model.lq_unit.shape == (1, 3, 16, 16) and model.teacher_outputs['t'].shape == (1, 3, 16, 16)


@pytest.mark.parametrize('rows, dataset, words', [
    ([[2, 16, 1], [1, 32, 4]], {}, 'untils increasing'),
    ([[1, 16]], {}, '[until iteration, gt_size, batch size per GPU]'),
    ([[1, 16, 0], [2, 32, 4]], {}, 'positive integers'),
    ([[1, 16, True], [2, 32, 4]], {}, 'positive integers'),
    ([[1, 16, 1], [2, 24, 4]], {}, 'datasets.train.gt_size: 24'),
    ([[1, 16, 1], [2, 32, 2]], {}, 'batch_size_per_gpu: 2'),
    ([[1, 15, 1], [2, 32, 4]], {}, 'gt_size 15 is not a multiple of scale 2'),
])
def test_a_bad_schedule_is_refused_before_the_first_step_naming_the_option(progressive_opt, tmp_path, rows, dataset,
                                                                           words):
    progressive_opt['train']['progressive_patches'] = rows
    progressive_opt['datasets']['train'].update(dataset)
    with pytest.raises(ValueError, match='train.progressive_patches') as error:
        build_model_from(progressive_opt, str(tmp_path / 'exp'))
    assert words in str(error.value)


def test_a_batch_smaller_than_the_schedule_is_refused(progressive_opt, tmp_path):
    model = build_model_from(progressive_opt, str(tmp_path / 'exp'))
    model.feed_data({'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 32, 32)})
    with pytest.raises(ValueError, match=r'iteration 2 needs LQ patches of 12x12 and a batch of 3'):
        model.optimize_parameters(2)


# ------------------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize('shape, gt_size, scale', [((7, 5), 16, 2), ((9, 12), 12, 1), ((20, 3), 8, 4)])
def test_padding_is_opencvs_reflection_at_the_bottom_and_right(shape, gt_size, scale):
    rng = np.random.default_rng(0)
    lq = rng.random((*shape, 3), dtype=np.float32)
    gt = rng.random((shape[0] * scale, shape[1] * scale, 3), dtype=np.float32)
    (padded_gt, ), padded_lq = pad_to_patch([gt], lq, gt_size, scale)
    pad_h, pad_w = max(0, gt_size // scale - shape[0]), max(0, gt_size // scale - shape[1])
    reflect = cv2.BORDER_REFLECT  # Restormer's padding(): edge pixel repeated, bottom and right only
    assert np.array_equal(padded_lq, cv2.copyMakeBorder(lq, 0, pad_h, 0, pad_w, reflect))
    assert np.array_equal(padded_gt, cv2.copyMakeBorder(gt, 0, pad_h * scale, 0, pad_w * scale, reflect))
    assert min(padded_lq.shape[:2]) >= gt_size // scale


def test_the_padded_dataset_serves_patches_larger_than_its_pairs(restoration_root):
    """The 60 x 76 pairs padded to a 96² patch: the patch is the whole padded pair (no flips)."""
    train = {'name': 'pad', 'type': 'KDPairedImageDataset', 'phase': 'train', 'scale': 1, 'gt_size': 96,
             'pad_to_gt_size': True, 'use_hflip': False, 'use_rot': False, 'io_backend': {'type': 'disk'},
             'dataroot_gt': os.path.join(restoration_root, 'train', 'target'),
             'dataroot_lq': os.path.join(restoration_root, 'train', 'input'), 'filename_tmpl': '{}'}
    sample = build_dataset(train)[0]
    for key, folder in (('gt', 'target'), ('lq', 'input')):
        image = cv2.imread(os.path.join(restoration_root, 'train', folder, os.path.basename(sample['gt_path'])))
        padded = cv2.copyMakeBorder(image, 0, 96 - 60, 0, 96 - 76, cv2.BORDER_REFLECT)
        expected = torch.from_numpy(padded[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255)
        assert torch.allclose(sample[key], expected, atol=1e-6), key
    with pytest.raises(ValueError, match='smaller than patch size'):
        build_dataset({**train, 'pad_to_gt_size': False})[0]  # BasicSR's crop stops without padding
    with pytest.raises(ValueError, match='gt_size = 96: 2 GT images are smaller'):
        check_disk_patch_size({**train, 'pad_to_gt_size': False}, 'datasets.train')  # and preflight before step 1
    check_disk_patch_size(train, 'datasets.train')


def test_pad_to_gt_size_is_a_key_of_our_paired_datasets_only():
    opt = load_option(os.path.join(OPTIONS, 'dckd_restormer_derain.yml'))
    check_option_keys(opt)
    cached = copy.deepcopy(opt)
    cached['datasets']['train'].update(type='KDCachedTargetDataset', dataroot_target='targets')
    check_option_keys(cached)  # a subclass reads its parent's keys
    opt['datasets']['train']['type'] = 'PairedImageDataset'
    with pytest.raises(UnknownOptionKey, match='pad_to_gt_size'):
        check_option_keys(opt)


# ------------------------------------------------------------------------------------------------- train.py
def test_train_py_pads_and_follows_the_schedule_across_a_resume(restoration_root, tmp_path):
    """Shrunk Logits KD on the 60 x 76 pairs: 48² x 1 at iteration 1, 96² x 2 (padded pairs) from iteration 2;
    stopped after 2 and resumed, iteration 3 keeps 96² x 2."""
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'logits_restormer_derain.yml')), restoration_root,
                        str(tmp_path), 'progressive')
    opt['model_type'] = 'KDRecordingLogitsModel'
    opt['datasets']['train'].update(gt_size=96, batch_size_per_gpu=2)
    opt['train']['progressive_patches'] = [[1, 48, 1], [3, 96, 2]]
    opt.pop('val')
    interrupted_and_resumed(opt, str(tmp_path))
    logs = sorted(glob.glob(str(tmp_path / 'experiments' / 'progressive' / 'train_progressive_*.log')))
    first, second = (open(path).read() for path in logs)
    assert 'Progressive patches: GT 48x48, batch 1 from iteration 1' in first
    assert 'Progressive patches: GT 96x96, batch 2 from iteration 2' in first
    assert 'Progressive patches: GT 96x96, batch 2 from iteration 3' in second and 'iteration 1' not in second
