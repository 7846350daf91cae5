"""Restormer's progressive learning as a training option: the patch size grows and the batch shrinks with the
iteration (``train.progressive_patches``). Not registered: the base model imports it with
``from .kd_progressive_patches import ProgressivePatches``."""
import torch
from basicsr.utils import get_root_logger

from .kd_iteration_schedule import IterationSchedule

OPTION = 'train.progressive_patches'
FULL_SIZE_KEYS = ('gt', 'target')  # the tensors of a batch at GT size: GT and KDCachedTargetDataset's target


class ProgressivePatches:
    """Progressive patch and batch sizes, as the official Restormer training does it: the data loader delivers the
    largest patch and batch of the schedule, and each step takes a random subset of the batch (``batch size``
    samples) and one random ``gt_size`` window, the same for every sample of the step, of GT and every tensor of GT
    size, with the matching ``gt_size / scale`` window of LQ.

    Args:
        rows (list[list[int]]): ``[[until iteration, gt_size, batch size per GPU], ...]``: iteration t uses the first
            row whose ``until`` is >= t, the last row after its ``until``.
        gt_size (int): ``datasets.train.gt_size``: must be the largest gt_size of the rows.
        batch_size (int): ``datasets.train.batch_size_per_gpu``: must be the largest batch size of the rows.
        scale (int): The SR scale (LQ windows are ``gt_size / scale``).

    Example (DCKD App. and Restormer: 128² x 64 up to 384² x 8, on one GPU)::

        datasets: {train: {gt_size: 384, batch_size_per_gpu: 64, ...}}
        train:
          progressive_patches: [[92000, 128, 64], [156000, 160, 40], [204000, 192, 32], [240000, 256, 16],
                                [276000, 320, 8], [300000, 384, 8]]
    """

    def __init__(self, rows, gt_size, batch_size, scale):
        self.schedule = IterationSchedule(rows, OPTION, names=('gt_size', 'batch size per GPU'),
                                          example='[[92000, 128, 64], [156000, 160, 40]]')
        sizes = [row[1] for row in self.schedule.rows]
        batches = [row[2] for row in self.schedule.rows]
        if max(sizes) != gt_size or max(batches) != batch_size:
            raise ValueError(f'{OPTION}: the data loader must deliver the largest patch and batch of the schedule, '
                             f'which each step crops: set datasets.train.gt_size: {max(sizes)} and '
                             f'batch_size_per_gpu: {max(batches)} (have {gt_size} and {batch_size})')
        uneven = [size for size in sizes if size % scale]
        if uneven:
            raise ValueError(f'{OPTION}: gt_size {uneven[0]} is not a multiple of scale {scale}')
        self.scale = scale
        self.sizes = None  # those of the last step, for the log

    def crop(self, iteration, batch):
        """A training batch (BasicSR's dict) cropped to the sizes of ``iteration``: ``lq`` to the LQ window, ``gt``
        and ``target`` (a cached target) to the matching GT window, the same samples kept in each, and in the lists
        of the batch (its paths).

        Args:
            iteration (int): The current iteration (BasicSR's ``current_iter``).
            batch (dict): ``lq`` (B, C, h, w), ``gt`` and optionally ``target`` (B, C, h·scale, w·scale), lists of B.
        """
        gt_size, size = self.schedule.values(iteration)
        if (gt_size, size) != self.sizes:
            self.sizes = gt_size, size
            get_root_logger().info(f'Progressive patches: GT {gt_size}x{gt_size}, batch {size} from iteration '
                                   f'{iteration}')
        lq_size, s = gt_size // self.scale, self.scale
        count, _, height, width = batch['lq'].shape
        if min(height, width) < lq_size or count < size:
            raise ValueError(f'{OPTION}: iteration {iteration} needs LQ patches of {lq_size}x{lq_size} and a batch of '
                             f'{size}, the loader gave {tuple(batch["lq"].shape)}')
        keep = torch.randperm(count)[:size].sort().values.tolist()
        top, left = (int(torch.randint(side - lq_size + 1, ())) for side in (height, width))
        cropped = {key: [value[i] for i in keep] if isinstance(value, list) else value for key, value in batch.items()}
        cropped['lq'] = batch['lq'][keep, :, top:top + lq_size, left:left + lq_size]
        for key in [key for key in FULL_SIZE_KEYS if key in batch]:
            cropped[key] = batch[key][keep, :, top * s:(top + lq_size) * s, left * s:(left + lq_size) * s]
        return cropped
