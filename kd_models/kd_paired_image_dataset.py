"""Paired training data that may be smaller than the patch (padded as Restormer pads it), and the base of datasets
whose pairs come with more images aligned with GT (KDCachedTargetDataset's cached target)."""
import numpy as np
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torchvision.transforms.functional import normalize


def pad_to_patch(full_size, lq, gt_size, scale):
    """Pad an LQ image and the images aligned with it at ``scale`` times its size at their bottom and right, by
    reflection (the edge pixel repeated, as OpenCV's BORDER_REFLECT and Restormer's ``padding``), up to the patch:
    ``gt_size / scale`` for LQ. Images at least as large are returned unchanged.

    Args:
        full_size (list[ndarray]): HWC images of GT size (GT, cached targets).
        lq (ndarray): The HWC LQ image.
        gt_size (int): The GT patch size.
        scale (int): GT size / LQ size.
    """
    lq_size = gt_size // scale
    pad_h, pad_w = max(0, lq_size - lq.shape[0]), max(0, lq_size - lq.shape[1])
    if not pad_h and not pad_w:
        return full_size, lq

    def pad(image, factor):
        return np.pad(image, ((0, pad_h * factor), (0, pad_w * factor), (0, 0)), mode='symmetric')

    return [pad(image, scale) for image in full_size], pad(lq, 1)


@DATASET_REGISTRY.register()
class KDPairedImageDataset(PairedImageDataset):
    """BasicSR's PairedImageDataset with ``pad_to_gt_size``: in training, a pair smaller than ``gt_size`` is first
    padded at its bottom and right by reflection (``pad_to_patch``), as Restormer's ``Dataset_PairedImage`` does
    for Rain13K, whose 481x321 images are smaller than the 384² patches of its progressive schedule. Without it,
    BasicSR stops at the first smaller image (and ``basicsr_kd.preflight`` refuses the data before step 1).

    Subclasses add images aligned with GT (``aligned_images``), cropped, padded, flipped, converted and normalised
    with GT. The validation phase is PairedImageDataset's.

    Option keys: those of PairedImageDataset and ``pad_to_gt_size`` (bool, default false).

    Example::

        datasets:
          train:
            type: KDPairedImageDataset
            dataroot_gt: datasets/Rain13K/train/target
            dataroot_lq: datasets/Rain13K/train/input
            gt_size: 384
            pad_to_gt_size: true
    """

    option_keys = {'pad_to_gt_size': None}  # besides PairedImageDataset's (basicsr_kd/option_keys.py)

    def aligned_images(self, paths, img_gt):
        """{key: HWC image} of images aligned with ``img_gt`` that the sample also returns (none here)."""
        return {}

    def __getitem__(self, index):
        if self.opt['phase'] != 'train':
            return super().__getitem__(index)
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        scale, gt_size = self.opt['scale'], self.opt['gt_size']
        paths = self.paths[index]
        img_gt = imfrombytes(self.file_client.get(paths['gt_path'], 'gt'), float32=True)
        img_lq = imfrombytes(self.file_client.get(paths['lq_path'], 'lq'), float32=True)
        aligned = self.aligned_images(paths, img_gt)
        full_size = [img_gt, *aligned.values()]
        if self.opt.get('pad_to_gt_size'):
            full_size, img_lq = pad_to_patch(full_size, img_lq, gt_size, scale)
        full_size, img_lq = paired_random_crop(full_size, img_lq, gt_size, scale, paths['gt_path'])
        full_size = full_size if isinstance(full_size, list) else [full_size]  # BasicSR unwraps a list of one
        images = augment([*full_size, img_lq], self.opt['use_hflip'], self.opt['use_rot'])
        if self.opt.get('color') == 'y':
            images = [bgr2ycbcr(image, y_only=True)[..., None] for image in images]
        tensors = img2tensor(images, bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            for tensor in tensors:
                normalize(tensor, self.mean, self.std, inplace=True)
        sample = dict(zip(['gt', *aligned, 'lq'], tensors))
        return {**sample, 'lq_path': paths['lq_path'], 'gt_path': paths['gt_path']}
