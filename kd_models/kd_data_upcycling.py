"""DUKD's data upcycling (Zhang et al., "Data Upcycling Knowledge Distillation for Image Super-Resolution", 2023):
inputs made from a training pair that the teacher labels for the student.

- **Zoom-in**: tiles of the GT patch at the LR patch's size. The GT patch (s·H × s·W) is cut into its s × s grid of
  aligned H × W tiles and ``count`` distinct tiles are drawn for the whole batch (as the authors' code does), giving
  ``count·B`` inputs of the LR input's size, tile-major (all samples' first drawn tile, then the second ...).
- **Zoom-out**: the LR patch downscaled by 1/s with MATLAB's bicubic ``imresize`` (antialiased, symmetric borders:
  BasicSR's ``imresize``, the function the authors call and the one DIV2K's LR images were made with), batched as
  two small resampling matrices (``H/s × H`` and ``W/s × W``) applied to the whole batch at once. A patch side that
  is not a multiple of s loses its last rows or columns first (``zoom_out_source``), so that the student's output
  of the zoomed-out input has the size of its LR target (the authors' 48-pixel patches never need it).

Not registered: models import it with ``from .kd_data_upcycling import ...`` (``KDLogitsModel``'s
``train.upcycling_opt``).

Usage in a model::

    upcycling = DataUpcycling(opt['train']['upcycling_opt'], scale, 'train.upcycling_opt')
    x_zi = zoom_in_tiles(gt, draw_zoom_in_tiles(scale, upcycling.zoom_in_tiles), scale)   # (count·B, C, H, W)
    x_zo = zoom_out(lq, scale)                                                     # (B, C, H // s, W // s)
"""
import functools
import math

import torch
from basicsr.utils.matlab_functions import calculate_weights_indices

# The keys of train.upcycling_opt that are not the loss's own (the rest builds the loss).
UPCYCLING_KEYS = ('zoom_in_tiles', 'zoom_out', 'prob')


def draw_zoom_in_tiles(scale, count):
    """Draw ``count`` distinct tiles of the s × s grid from torch's global RNG (CPU), as row-major indices."""
    return torch.randperm(scale * scale)[:count]


def zoom_in_tiles(gt, tiles, scale):
    """The drawn tiles of every GT patch of the batch.

    Args:
        gt (Tensor): (B, C, s·H, s·W) GT patches.
        tiles (Tensor): Row-major tile indices in [0, s²) (tile k covers rows ``k // s`` · H .. and columns
            ``k % s`` · W .. of the patch).
        scale (int): s.

    Returns:
        Tensor: (len(tiles)·B, C, H, W), tile-major.
    """
    batch, channels, height, width = gt.shape
    if height % scale or width % scale:
        raise ValueError(f'zoom-in: the GT patch {height}x{width} is not a multiple of the scale {scale}')
    grid = gt.reshape(batch, channels, scale, height // scale, scale, width // scale)
    grid = grid.permute(2, 4, 0, 1, 3, 5).reshape(scale * scale, batch, channels, height // scale, width // scale)
    return grid[tiles.to(gt.device)].flatten(0, 1)


@functools.lru_cache(maxsize=32)
def matlab_bicubic_matrix(in_length, scale):
    """The (ceil(in_length / scale), in_length) float64 matrix of MATLAB's antialiased bicubic downscaling by
    ``scale`` along one axis, symmetric borders folded in (BasicSR's ``calculate_weights_indices``)."""
    out_length = math.ceil(in_length / scale)
    weights, indices, sym_start, _ = calculate_weights_indices(in_length, out_length, 1 / scale, 'cubic', 4, True)
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    # indices are positions in the input padded by sym_start mirrored pixels at each end (symmetric: x[-1] = x[0])
    positions = indices[:, :1].long() + torch.arange(weights.shape[1]) - sym_start
    positions = torch.where(positions < 0, -positions - 1, positions)
    positions = torch.where(positions >= in_length, 2 * in_length - 1 - positions, positions)
    if positions.min() < 0 or positions.max() >= in_length:
        raise ValueError(f'zoom-out: a side of {in_length} pixels is too small to downscale by {scale}')
    matrix.scatter_add_(1, positions, weights.double())
    return matrix


def zoom_out_source(lq, scale):
    """The top-left part of the LR batch whose sides are multiples of ``scale``: what ``zoom_out`` downscales and
    the LR target of the student's output on it."""
    height, width = lq.shape[-2:]
    return lq[..., :height - height % scale, :width - width % scale]


def zoom_out(lq, scale):
    """The LR batch (``zoom_out_source``) downscaled by 1/``scale`` with MATLAB's antialiased bicubic (as BasicSR's
    ``imresize``).

    Args:
        lq (Tensor): (B, C, H, W).
        scale (int): s.

    Returns:
        Tensor: (B, C, H // s, W // s) in ``lq``'s dtype, on its device.
    """
    lq = zoom_out_source(lq, scale)
    height, width = lq.shape[-2:]
    rows = matlab_bicubic_matrix(height, scale).to(lq.device, lq.dtype)
    columns = matlab_bicubic_matrix(width, scale).to(lq.device, lq.dtype)
    return torch.einsum('oh,bchw,pw->bcop', rows, lq, columns)


class DataUpcycling:
    """The upcycling settings of ``train.upcycling_opt``, checked before the first step (errors name the key).

    Args:
        upcycling_opt (dict): The option dict; its keys ``zoom_in_tiles`` (int in [0, s²], default 1: tiles of each
            GT patch the student and the teacher see at LR size), ``zoom_out`` (bool, default false: also the LR
            patch downscaled by 1/s) and ``prob`` (float in [0, 1], default 0: probability of each label-consistency
            operation on the student's zoom-in inputs) are read; the rest is ``loss_opt``.
        scale (int): The SR scale s (> 1).
        option (str): The key named in errors.
    """

    def __init__(self, upcycling_opt, scale, option='train.upcycling_opt'):
        upcycling_opt = dict(upcycling_opt)
        if not isinstance(scale, int) or scale < 2:
            raise ValueError(f'{option}: data upcycling zooms by the SR scale, which must be an integer > 1 '
                             f'(scale = {scale!r})')
        self.scale = scale
        self.zoom_in_tiles = upcycling_opt.pop('zoom_in_tiles', 1)
        if isinstance(self.zoom_in_tiles, bool) or not isinstance(self.zoom_in_tiles, int) \
                or not 0 <= self.zoom_in_tiles <= scale * scale:
            raise ValueError(f'{option}.zoom_in_tiles = {self.zoom_in_tiles!r}: the number of GT tiles must be an '
                             f'integer in [0, {scale * scale}] (the {scale}x{scale} grid at scale {scale})')
        self.zoom_out = upcycling_opt.pop('zoom_out', False)
        if not isinstance(self.zoom_out, bool):
            raise ValueError(f'{option}.zoom_out = {self.zoom_out!r}: must be true or false')
        self.prob = upcycling_opt.pop('prob', 0.0)
        if isinstance(self.prob, bool) or not isinstance(self.prob, (int, float)) or not 0 <= self.prob <= 1:
            raise ValueError(f'{option}.prob = {self.prob!r}: must be a probability in [0, 1]')
        if not self.zoom_in_tiles and not self.zoom_out:
            raise ValueError(f'{option}: zoom_in_tiles = 0 and zoom_out = false upcycle nothing; remove the key')
        self.loss_opt = upcycling_opt
