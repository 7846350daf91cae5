"""Paired training data with the frozen networks' output read from a cache (datasets_prep/cache_teacher_outputs.py)."""
import os

import cv2
import numpy as np
from basicsr.utils.registry import DATASET_REGISTRY

from .kd_paired_image_dataset import KDPairedImageDataset

CACHE_MANIFEST = 'manifest.json'


def cached_target_path(folder, gt_path):
    """Where the cache keeps the target of the training pair whose GT image is ``gt_path`` (a 16-bit PNG)."""
    return os.path.join(folder, os.path.splitext(os.path.basename(gt_path))[0] + '.png')


def read_cached_target(path):
    """A cached target as float32 BGR in [0, 1] (HWC), as BasicSR reads images."""
    target = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if target is None or target.dtype != np.uint16:
        raise ValueError(f'{path}: not a 16-bit PNG target of datasets_prep/cache_teacher_outputs.py (missing or '
                         'damaged: build the cache again, it writes only what is missing)')
    return target.astype(np.float32) / 65535.


@DATASET_REGISTRY.register()
class KDCachedTargetDataset(KDPairedImageDataset):
    """KDPairedImageDataset plus ``target``: the frozen target (a teacher's output, MTKD's aggregated output)
    of each training pair, computed once on the whole image by ``datasets_prep/cache_teacher_outputs.py`` and read
    from ``dataroot_target``. GT and target get the same crop and GT, target and LQ the same flips and rotations.

    A distillation model takes the target from the batch instead of running its frozen networks when
    ``train.teacher_cache`` names the same folder.

    Option keys: those of KDPairedImageDataset (disk or lmdb for GT and LQ) and ``dataroot_target`` (a folder on
    disk).

    Example::

        datasets:
          train:
            type: KDCachedTargetDataset
            dataroot_gt: datasets/DIV2K/DIV2K_train_HR_sub
            dataroot_lq: datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub
            dataroot_target: datasets/DIV2K/targets_logits_edsr_x4
    """

    option_keys = {'dataroot_target': None}  # besides KDPairedImageDataset's (basicsr_kd/option_keys.py)

    def __init__(self, opt):
        super().__init__(opt)
        self.target_folder = opt['dataroot_target']
        if not os.path.isfile(os.path.join(self.target_folder, CACHE_MANIFEST)):
            raise FileNotFoundError(f'datasets.{opt.get("phase", "train")}.dataroot_target = {self.target_folder}: '
                                    f'no {CACHE_MANIFEST}; build the cache with python -m '
                                    'datasets_prep.cache_teacher_outputs -opt <this option file>')

    def __getitem__(self, index):
        if self.opt['phase'] != 'train':
            raise ValueError('KDCachedTargetDataset is a training set (phase train); validate on PairedImageDataset')
        return super().__getitem__(index)

    def aligned_images(self, paths, img_gt):
        img_target = read_cached_target(cached_target_path(self.target_folder, paths['gt_path']))
        if img_target.shape != img_gt.shape:
            raise ValueError(f'{paths["gt_path"]}: cached target {img_target.shape} and GT {img_gt.shape} differ')
        return {'target': img_target}
