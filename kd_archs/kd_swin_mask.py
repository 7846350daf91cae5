"""The attention mask of Swin's shifted windows, shared by the MTKD aggregator and Uformer (a helper module: no
class registered here)."""
import itertools

import torch
from basicsr.archs.swinir_arch import window_partition


def shifted_window_mask(h, w, window_size, shift_size):
    """Attention mask of Swin's shifted windows, built in the spatial domain (MTKD's released code takes the DCT of
    the region map first, which scrambles it).

    After the feature map is rolled by ``-shift_size``, a window at the bottom or right edge holds pixels from
    up to four regions that are not neighbours in the un-rolled map; tokens of different regions must not
    attend to each other.

    Returns:
        Tensor: (num_windows, ws*ws, ws*ws), 0 within a region and -100 across regions, windows in row-major order.
    """
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    for label, (rows, cols) in enumerate(itertools.product(cuts, cuts)):
        region[:, rows, cols] = label
    region = window_partition(region, window_size).flatten(1)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, -100.)
