"""Cut DIV2K into BasicSR's training sub-images: HR 480x480 every 240 pixels and the LR x2/x3/x4 sub-images of the
same places.

Expects the official archives (https://data.vision.ee.ethz.ch/cvl/DIV2K/: DIV2K_train_HR.zip and
DIV2K_train_LR_bicubic_X2.zip, _X3.zip, _X4.zip; DIV2K_valid_* for --splits valid) unpacked in --root:

    <root>/DIV2K_train_HR/0001.png ... 0800.png          800 images (valid: DIV2K_valid_HR/0801 ... 0900.png, 100)
    <root>/DIV2K_train_LR_bicubic/X2/0001x2.png ...      one per HR image and scale (not read with --generate-lr)

Writes (BasicSR's names, which options/*.yml read):

    <root>/DIV2K_train_HR_sub/0001_s001.png ...          HR sub-images, 480x480, every 240 pixels
    <root>/DIV2K_train_LR_bicubic/X2_sub/0001_s001.png   LR sub-images of the same places: 480/s, every 240/s
    <root>/meta_info_DIV2K800sub_GT.txt                  '0001_s001.png (480,480,3)' per HR sub-image, the format of
                                                         BasicSR's generate_meta_info.py (valid: ..._DIV2K100sub_GT)

Sub-images start every --step pixels; one flush with the right/bottom edge is added when more than --thresh-size
pixels would be left over. The default 0 is the setting of BasicSR's extract_subimages.py (BasicSR's
meta_info_DIV2K800sub_GT.txt lists 32,592 sub-images); 48 is MMSR/EDVR's. HR is first cropped to a multiple of every
scale (DIV2K's sides already are), so the LR sub-image of the HR one at (y, x) starts at (y/s, x/s). --generate-lr
uses BasicSR's MATLAB-style bicubic imresize of HR instead of the official LR images. The HR image count (800 / 100)
is checked. A re-run writes only the sub-images that are missing.

Example: python -m datasets_prep.prepare_div2k --root datasets/DIV2K --scales 2 3 4
"""
import functools
import math
import os

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.data.transforms import mod_crop
from datasets_prep.common import (check_count, crop_and_downscale, cut_sub_images, image_paths, image_size,
                                  make_parser, parallel_map, read_image, report_strays, run, write_text)

META_INFO = {'train': 'meta_info_DIV2K800sub_GT.txt', 'valid': 'meta_info_DIV2K100sub_GT.txt'}


def official_lr(lr_path, hr_path, scale, hr_shape):
    """An official LR image, checked against its HR image and cropped to ``hr_shape`` / ``scale``."""
    lr = read_image(lr_path)
    height, width = image_size(hr_path)
    low = (hr_shape[0] // scale, hr_shape[1] // scale)
    high = (-(-height // scale), -(-width // scale))
    if not (low[0] <= lr.shape[0] <= high[0] and low[1] <= lr.shape[1] <= high[1]):
        raise ValueError(f'{lr_path}: {lr.shape[0]}x{lr.shape[1]} pixels, but its HR image {hr_path} '
                         f'({height}x{width}) at x{scale} needs {low[0]}x{low[1]}')
    return lr[:low[0], :low[1]]


def cut_image(item, out_folders, scales, size, step, thresh):
    """Sub-images of one HR image and of its LR images (official ones, or generated when ``lr_paths`` is None).

    Args:
        item (tuple): (stem, HR path, {scale: LR path} or None).
        out_folders (dict): {1: HR sub-image folder, scale: LR sub-image folder}.

    Returns:
        list[str]: The sub-image names.
    """
    stem, hr_path, lr_paths = item
    multiple = math.lcm(*scales)
    height, width = image_size(hr_path)
    shape = (height - height % multiple, width - width % multiple)

    @functools.lru_cache(maxsize=None)
    def generated():
        return crop_and_downscale(read_image(hr_path), scales)

    def load(scale):
        if lr_paths is None:
            hr, lrs = generated()
            return hr if scale == 1 else lrs[scale]
        if scale == 1:
            return mod_crop(read_image(hr_path), multiple)
        return official_lr(lr_paths[scale], hr_path, scale, shape)

    sources = [(folder, scale, functools.partial(load, scale)) for scale, folder in out_folders.items()]
    return cut_sub_images(stem, shape, sources, size, step, thresh, hr_path)


def split_items(root, split, scales, generate_lr, expect):
    """[(stem, HR path, {scale: LR path} or None)] of a split, after checking counts and that every LR file exists."""
    hr_folder = os.path.join(root, f'DIV2K_{split}_HR')
    hr_images = image_paths(hr_folder)
    check_count(len(hr_images), f'DIV2K_{split}', hr_folder, expect)
    stems = {os.path.splitext(name)[0]: path for name, path in hr_images.items()}
    if generate_lr:
        return [(stem, path, None) for stem, path in sorted(stems.items())]
    lr_images = {}
    for scale in scales:
        lr_folder = os.path.join(root, f'DIV2K_{split}_LR_bicubic', f'X{scale}')
        lr_images[scale] = image_paths(lr_folder)
        missing = [f'{stem}x{scale}.png' for stem in stems if f'{stem}x{scale}.png' not in lr_images[scale]]
        if missing:
            raise ValueError(f'{lr_folder}: {len(missing)} LR images of {hr_folder} are missing, e.g. {missing[:3]} '
                             '(or use --generate-lr)')
    return [(stem, path, {s: lr_images[s][f'{stem}x{s}.png'] for s in scales}) for stem, path in sorted(stems.items())]


def prepare(args):
    scales = sorted(set(args.scales))
    for value, option in ((args.crop_size, '--crop-size'), (args.step, '--step')):
        if any(value % scale for scale in scales):
            raise ValueError(f'{option} {value} must be divisible by every scale {scales}, so that LR sub-images align')
    for split in args.splits:
        items = split_items(args.root, split, scales, args.generate_lr, args.expect)
        out_folders = {1: os.path.join(args.root, f'DIV2K_{split}_HR_sub')}
        out_folders.update({s: os.path.join(args.root, f'DIV2K_{split}_LR_bicubic', f'X{s}_sub') for s in scales})
        job = functools.partial(cut_image, out_folders=out_folders, scales=scales, size=args.crop_size, step=args.step,
                                thresh=args.thresh_size)
        names = sorted(name for subs in parallel_map(job, items, args.workers, f'DIV2K {split}') for name in subs)
        meta_info = os.path.join(args.root, META_INFO[split])
        write_text(meta_info, ''.join(f'{name} ({args.crop_size},{args.crop_size},3)\n' for name in names))
        for folder in out_folders.values():
            report_strays(folder, names)
        print(f'DIV2K {split}: {len(items)} images -> {len(names)} sub-images in each of '
              f'{", ".join(out_folders.values())}; meta info {meta_info}')


def main(argv=None):
    parser = make_parser(__doc__, crop=(480, 240))
    parser.add_argument('--root', default='datasets/DIV2K', help='folder of the unpacked archives and of the output')
    parser.add_argument('--splits', nargs='+', choices=('train', 'valid'), default=['train'], help='default: train')
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], help='LR scales (default: 2 3 4)')
    parser.add_argument('--thresh-size', type=int, default=0, help='leftover that adds an edge sub-image (default: 0)')
    parser.add_argument('--generate-lr', action='store_true', help='bicubic LR from HR instead of the official LR')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
