"""Evaluation of a trained student as the papers report it: any image size, and the metrics written as a table.

Self-contained (padding, tiles and the table writer live here), so the file also registers when copied into a
BasicSR fork's ``basicsr/models/``."""
import csv
import os
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY


def pad_to_multiple(img, multiple):
    """Pad ``img`` (N, C, H, W) at the bottom and right so that H and W are multiples of ``multiple``.

    Reflected, as BasicSR's SwinIRModel pads; replicated when the image is too small to reflect the padding.
    """
    h, w = img.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return img
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(img, (0, pad_w, 0, pad_h), mode=mode)


def forward_padded(net, lq, multiple=1, scale=1):
    """``net(lq)`` with ``lq`` padded to a multiple of ``multiple`` and the output cropped back to ``scale`` x its size.

    Args:
        net (callable): The network, (N, C, H, W) -> (N, C', scale * H, scale * W).
        lq (Tensor): The input.
        multiple (int): Window size (or any size the network needs its input to be a multiple of). Default: 1.
        scale (int): Upscaling factor of the network. Default: 1.
    """
    h, w = lq.shape[-2:]
    return net(pad_to_multiple(lq, multiple))[..., :h * scale, :w * scale]


def tile_spans(length, size, overlap):
    """Tiles along one side: ``[(start, keep_start, keep_end)]``.

    Tiles of ``size`` start every ``size - overlap`` pixels, the last flush with the end. Each keeps its part that is
    at least ``overlap // 2`` pixels away from its inner edges (the image edges are kept); the kept parts cover the
    side, and they overlap only where the last tile had to be moved back.
    """
    if length <= size:
        return [(0, 0, length)]
    margin = overlap // 2
    starts = list(range(0, length - size, size - overlap)) + [length - size]
    return [(s, s + margin if s > 0 else 0, s + size - margin if s + size < length else length) for s in starts]


def forward_tiled(net, lq, size, overlap, scale=1):
    """``net(lq)`` computed tile by tile: overlapping ``size`` x ``size`` tiles of ``lq``, each trimmed by
    ``overlap // 2`` pixels at its inner edges, averaged where the trimmed tiles still overlap.

    For a fully convolutional network whose receptive field reaches at most ``overlap // 2`` input pixels from the
    output pixel, the result equals ``net(lq)``; networks with attention windows or global statistics differ slightly.

    Args:
        net (callable): The network, (N, C, h, w) -> (N, C', scale * h, scale * w) for every tile size h, w.
        lq (Tensor): The input (N, C, H, W).
        size (int): Tile side in input pixels.
        overlap (int): Overlap of neighbouring tiles in input pixels, smaller than ``size``.
        scale (int): Upscaling factor of the network. Default: 1.

    Returns:
        Tensor: (N, C', scale * H, scale * W).
    """
    n, _, h, w = lq.shape
    out = weight = None
    for top, y0, y1 in tile_spans(h, size, overlap):
        for left, x0, x1 in tile_spans(w, size, overlap):
            tile = net(lq[..., top:top + size, left:left + size])
            if out is None:
                out = tile.new_zeros(n, tile.shape[1], h * scale, w * scale)
                weight = tile.new_zeros(1, 1, h * scale, w * scale)
            kept = tile[..., (y0 - top) * scale:(y1 - top) * scale, (x0 - left) * scale:(x1 - left) * scale]
            out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] += kept
            weight[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] += 1
    return out / weight


PIXEL_RANGES = ('[0,1]', '[-1,1]')
PIXEL_RANGE_KEY = 'pixel_range'  # the checkpoint entry in which a student records the range it works in


def check_pixel_range(value, option):
    """``value`` if it names a pixel range; ValueError naming ``option`` otherwise."""
    if value not in PIXEL_RANGES:
        raise ValueError(f'{option} = {value}: use one of {list(PIXEL_RANGES)}')
    return value


def to_pixel_range(image, pixel_range):
    """An image in [0, 1] mapped into ``pixel_range``."""
    return 2 * image - 1 if pixel_range == '[-1,1]' else image


def to_unit_range(image, pixel_range):
    """An image in ``pixel_range`` mapped into [0, 1]."""
    return (image + 1) / 2 if pixel_range == '[-1,1]' else image


def student_pixel_range(given, load_path):
    """The pixel range to evaluate the student of ``load_path`` in: ``val.pixel_range`` (``given``; default
    ``'[0,1]'``), which must agree with the range the checkpoint records (``pixel_range``, written by KDSKDModel).

    A checkpoint that records none (plain BasicSR training, official weights) is evaluated in ``given``.
    """
    if given is not None:
        check_pixel_range(given, 'val.pixel_range')
    recorded = torch.load(load_path, map_location='cpu', weights_only=True).get(PIXEL_RANGE_KEY)
    if recorded is not None and recorded != (given or '[0,1]'):
        setting = 'is not set (default [0,1])' if given is None else f'= {given}'
        raise ValueError(f'val.pixel_range {setting} but path.pretrain_network_g = {load_path} was trained in '
                         f'{recorded} (its {PIXEL_RANGE_KEY} entry): the student expects its inputs and gives its '
                         f"outputs in that range. Set val.pixel_range: '{recorded}'.")
    return given or '[0,1]'


def format_value(value, digits):
    return '' if value is None else f'{value:.{digits}f}'


def markdown_table(header, rows, digits=4):
    """A Markdown table: the first column left-aligned (labels), the others right-aligned numbers ('-' if missing)."""
    lines = ['| ' + ' | '.join(header) + ' |', '|---|' + '---:|' * (len(header) - 1)]
    for label, *values in rows:
        lines.append('| ' + ' | '.join([label] + [format_value(v, digits) or '-' for v in values]) + ' |')
    return '\n'.join(lines) + '\n'


def write_table(prefix, header, rows, title=None, notes=()):
    """Write ``<prefix>.csv`` (full precision) and ``<prefix>.md`` (4 decimals).

    Args:
        prefix (str): Path of both files without extension.
        header (list[str]): Column names; the first names the row labels.
        rows (list[list]): ``[label, value, ...]``, values float or None (missing).
        title (str | None): Heading of the Markdown file.
        notes (list[str]): Lines below the Markdown table.
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(f'{prefix}.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([label, *(format_value(v, 6) for v in values)] for label, *values in rows)
    text = markdown_table(header, rows)
    if title:
        text = f'## {title}\n\n{text}'
    if notes:
        text += '\n' + ''.join(f'{line}\n' for line in notes)
    with open(f'{prefix}.md', 'w') as f:
        f.write(text)
    return text


def check_tile(tile):
    """``val.tile`` as ``{size, overlap}`` (or None); ValueError naming the option when it is not usable."""
    if tile is None:
        return None
    if not isinstance(tile, dict) or set(tile) != {'size', 'overlap'}:
        raise ValueError(f'val.tile = {tile}: give {{size: <int>, overlap: <int>}} in LQ pixels, or ~ for none')
    size, overlap = tile['size'], tile['overlap']
    if not (isinstance(size, int) and isinstance(overlap, int) and 0 <= overlap < size):
        raise ValueError(f'val.tile = {tile}: size and overlap must be integers with 0 <= overlap < size')
    return {'size': size, 'overlap': overlap}


@MODEL_REGISTRY.register()
class KDEvalModel(SRModel):
    """Evaluate a student (any BasicSR restoration network saved with ``params``/``params_ema``) with BasicSR's
    metrics, on images of any size, and write the results as a table.

    Option keys it reads (besides SRModel's):

    - ``path.pretrain_network_g``: the trained student; a missing file fails before anything is built.
    - ``val.pad_multiple``: reflect-pad the input at the bottom/right to a multiple of this and crop the output back,
      as BasicSR's SwinIRModel does (default: ``network_g.window_size`` if set, else no padding).
    - ``val.pixel_range``: ``'[0,1]'`` (default) | ``'[-1,1]'``: the range the student works in (KDSKDModel's
      ``train.pixel_range``); the input is mapped into it and the output back to [0, 1] before the metrics. It must
      agree with the range the checkpoint records (its ``pixel_range`` entry), or nothing runs.
    - ``val.tile: {size, overlap}`` (LQ pixels; ``~``: whole images): run the network on overlapping tiles, each
      trimmed by ``overlap // 2`` at its inner edges, averaged where they still overlap. Equal to whole-image inference
      for a fully convolutional network whose receptive field reaches at most ``overlap // 2`` pixels.

    After each dataset's validation the averaged metrics go to ``metrics.csv`` and ``metrics.md`` in ``path.log``
    (``results/<name>/`` under test.py): one row per dataset of the run, one column per metric.

    Overrides of SRModel: ``__init__`` (checks ``val.tile``, the student file and ``val.pixel_range`` first), ``test``
    (pixel range, padding and tiles), ``_log_validation_metric_values`` (also writes the table). Inherited unchanged:
    ``feed_data``, ``nondist_validation``/``dist_validation`` with BasicSR's ``calculate_psnr``/``calculate_ssim``,
    image saving.

    Example::

        model_type: KDEvalModel
        path: {pretrain_network_g: experiments/logits_edsr_x4/models/net_g_latest.pth, param_key_g: params_ema}
        val:
          tile: {size: 256, overlap: 32}
          metrics:
            psnr: {type: calculate_psnr, crop_border: 4, test_y_channel: true}
    """

    # besides BasicSR's (basicsr_kd/option_keys.py)
    option_keys = {'val': {'tile': None, 'pad_multiple': None, 'pixel_range': None}}

    def __init__(self, opt):
        load_path = opt['path'].get('pretrain_network_g')
        if not load_path or not os.path.isfile(load_path):
            raise FileNotFoundError(f'path.pretrain_network_g = {load_path}: no such file. Set it to the trained '
                                    'student, e.g. experiments/<training name>/models/net_g_latest.pth.')
        val = opt.get('val') or {}
        self.tile = check_tile(val.get('tile'))
        self.pixel_range = student_pixel_range(val.get('pixel_range'), load_path)
        self.pad_multiple = val.get('pad_multiple') or opt['network_g'].get('window_size') or 1
        self.metric_rows = OrderedDict()
        super().__init__(opt)

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        training = net.training
        net.eval()
        scale = self.opt.get('scale', 1)
        forward = partial(forward_padded, net, multiple=self.pad_multiple, scale=scale)
        lq = to_pixel_range(self.lq, self.pixel_range)
        with torch.no_grad():
            output = forward_tiled(forward, lq, scale=scale, **self.tile) if self.tile else forward(lq)
        self.output = to_unit_range(output, self.pixel_range)
        net.train(training)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self.metric_rows[dataset_name] = dict(self.metric_results)
        metrics, path = self.opt['val']['metrics'], self.opt['path']
        notes = [f'- network_g: {path["pretrain_network_g"]} [{path.get("param_key_g", "params")}], pixel range '
                 f'{self.pixel_range}']
        notes += [
            f'- {name}: {opt["type"]}(' + ', '.join(f'{k}={v}' for k, v in opt.items() if k != 'type') + ')'
            for name, opt in metrics.items()
        ]
        rows = [[name, *(row[metric] for metric in metrics)] for name, row in self.metric_rows.items()]
        write_table(os.path.join(path['log'], 'metrics'), ['dataset', *metrics], rows, self.opt['name'], notes)
