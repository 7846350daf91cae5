"""Build the demo super-resolution set from the colour photographs bundled inside scikit-image (no download).

Layout (BasicSR's paired folders; HR and LR files share their names, so ``filename_tmpl: '{}'`` pairs them)::

    <root>/{train,val}/HR/<name>.png
    <root>/{train,val}/LR_bicubic/X{2,3,4}/<name>.png

The wheel bundles only 8 colour photographs (astronaut, chelsea, coffee, rocket, the left motorcycle view,
immunohistochemistry, retina, hubble_deep_field; the right motorcycle view is a near-duplicate and not used), so the
two largest are cut into non-overlapping crops to reach 12 images: hubble_deep_field into 2 halves, the central
960x960 square of retina into 4 quadrants. Training images come from the front of ``PHOTOS``, validation images from
its back (both splits are disjoint and do not depend on each other's count). Every HR image is centre-cropped to a
multiple of 12 on both sides, so one HR folder is valid for x2, x3 and x4. LR images are BasicSR's MATLAB-style
bicubic ``imresize`` of the HR image (float in [0, 1], rounded to uint8), as BasicSR's own scripts do.

Usage: ``python datasets_prep/make_demo_sr.py [--root datasets/demo_sr] [--scales 2 3 4] [--force]``
"""
import argparse
import os
import shutil
import sys

import cv2
import numpy as np
import skimage.data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import basicsr_kd  # noqa: F401,E402  (makes BasicSR 1.4.2 importable)
from basicsr.utils.matlab_functions import imresize  # noqa: E402

# (name, skimage.data function, region (top, bottom, left, right) or None); train from the front, val from the back.
PHOTOS = (
    ('motorcycle', 'stereo_motorcycle', None),  # left view, 500x741
    ('immunohistochemistry', 'immunohistochemistry', None),  # 512x512
    ('hubble_left', 'hubble_deep_field', (0, 872, 0, 500)),  # 872x1000
    ('hubble_right', 'hubble_deep_field', (0, 872, 500, 1000)),
    ('retina_tl', 'retina', (225, 705, 225, 705)),  # 1411x1411, quadrants of the central 960x960 square
    ('retina_tr', 'retina', (225, 705, 705, 1185)),
    ('retina_bl', 'retina', (705, 1185, 225, 705)),
    ('retina_br', 'retina', (705, 1185, 705, 1185)),
    ('rocket', 'rocket', None),  # 427x640
    ('coffee', 'coffee', None),  # 400x600
    ('astronaut', 'astronaut', None),  # 512x512
    ('chelsea', 'chelsea', None),  # 300x451
)
SCALES = (2, 3, 4)
MULTIPLE = 12  # least common multiple of SCALES


def load_hr(function, region=None):
    """A bundled photograph (RGB uint8), cut to ``region`` and centre-cropped to a multiple of 12 on both sides."""
    img = getattr(skimage.data, function)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle returns (left, right, disparity)
    if region is not None:
        img = img[region[0]:region[1], region[2]:region[3]]
    h, w = img.shape[0] // MULTIPLE * MULTIPLE, img.shape[1] // MULTIPLE * MULTIPLE
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def bicubic_downscale(hr, scale):
    """MATLAB-style bicubic downscaling of an RGB uint8 image by an integer ``scale`` (BasicSR's ``imresize``)."""
    return np.clip(np.round(imresize(hr.astype(np.float64) / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)


def write_png(path, rgb):
    """Write atomically (temporary file, then rename), so an interrupted build never leaves a truncated image."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path + '.tmp.png', rgb[..., ::-1]):
        raise OSError(f'cannot write {path}')
    os.replace(path + '.tmp.png', path)


def folders(root, split, scales):
    """{1: HR folder, scale: LR folder for each scale} of a split."""
    return {1: os.path.join(root, split, 'HR'), **{s: os.path.join(root, split, 'LR_bicubic', f'X{s}') for s in scales}}


def split_photos(num_train, num_val):
    """{'train': entries, 'val': entries} from ``PHOTOS``: disjoint, in a fixed order."""
    for label, num in (('num_train', num_train), ('num_val', num_val)):
        if not isinstance(num, int) or num < 1:
            raise ValueError(f'{label} must be a positive integer, got {num!r}')
    if num_train + num_val > len(PHOTOS):
        raise ValueError(f'num_train + num_val = {num_train + num_val}, but only {len(PHOTOS)} images can be made from '
                         'the photographs bundled with scikit-image')
    return {'train': PHOTOS[:num_train], 'val': PHOTOS[len(PHOTOS) - num_val:]}


def build_demo_set(root, scales=SCALES, num_train=8, num_val=4, force=False):
    """Write the demo set under ``root``; a complete set is left alone unless ``force``.

    Returns:
        dict: {'train': [names], 'val': [names]} (file names without '.png').
    """
    scales = (scales, ) if isinstance(scales, int) else tuple(scales)
    unknown = [s for s in scales if s not in SCALES]
    if unknown or not scales:
        raise ValueError(f'unknown scale(s) {unknown or list(scales)}: choose from {list(SCALES)} '
                         f'(HR sizes are multiples of {MULTIPLE})')
    scales = sorted({int(s) for s in scales})
    splits = split_photos(num_train, num_val)
    names = {split: [entry[0] for entry in entries] for split, entries in splits.items()}
    complete = all(
        os.path.isdir(folder) and sorted(os.listdir(folder)) == sorted(f'{n}.png' for n in names[split])
        for split in splits for folder in folders(root, split, scales).values())
    if complete and not force:
        print(f'Demo set already complete in {root} ({num_train} train, {num_val} val, scales {scales}); '
              'use --force to rebuild.')
        return names
    for split in splits:  # remove earlier (partial or different) builds: only the folders this script writes
        for sub in ('HR', 'LR_bicubic'):
            shutil.rmtree(os.path.join(root, split, sub), ignore_errors=True)
    jobs = [(split, entry) for split, entries in splits.items() for entry in entries]
    for index, (split, (name, function, region)) in enumerate(jobs, 1):
        hr = load_hr(function, region)
        for scale, folder in folders(root, split, scales).items():
            write_png(os.path.join(folder, f'{name}.png'), bicubic_downscale(hr, scale) if scale > 1 else hr)
        print(f'[{index}/{num_train + num_val}] {split}/{name}.png: HR {hr.shape[0]}x{hr.shape[1]} (HxW), LR '
              + ', '.join(f'x{s}' for s in scales), flush=True)
    print(f'Demo set written to {root}.')
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='datasets/demo_sr', help='output folder')
    parser.add_argument('--scales', type=int, nargs='+', default=list(SCALES), help='downscaling factors (2, 3, 4)')
    parser.add_argument('--num-train', type=int, default=8, help='training images')
    parser.add_argument('--num-val', type=int, default=4, help='validation images')
    parser.add_argument('--force', action='store_true', help='rebuild even if the set is complete')
    args = parser.parse_args()
    try:
        build_demo_set(args.root, args.scales, args.num_train, args.num_val, args.force)
    except ValueError as error:
        parser.error(str(error))


if __name__ == '__main__':
    main()
