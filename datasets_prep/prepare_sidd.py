"""Prepare SIDD for real-noise denoising: the SIDD-Medium sRGB training pairs cut into 512x512 crops, and the
validation blocks of the two .mat files as PNG pairs.

Expects the official files (https://abdokamel.github.io/sidd/: SIDD_Medium_Srgb.zip unpacked, and the two
validation .mat files):

    <src>/Data/<scene>/<id>_NOISY_SRGB_<capture>.PNG   noisy images, captures 010 and 011 of each scene instance
    <src>/Data/<scene>/<id>_GT_SRGB_<capture>.PNG      their ground truth: 320 pairs in 160 folders
    <val>/ValidationNoisyBlocksSrgb.mat                uint8 RGB blocks 40x32x256x256x3 under the key of the file name
    <val>/ValidationGtBlocksSrgb.mat                   their ground truth: 1,280 blocks

Writes (a re-run writes only what is missing):

    <out>/train/{input_crops,target_crops}/<id>_<capture>_s001.png ...   512x512 every 384 pixels, the last flush
                                          with the edge (Restormer's generate_patches_sidd.py: 512, overlap 128)
    <out>/val/{input,target}/<block>_<patch>.png   the 1,280 blocks as 0001_01.png ... 0040_32.png (numbered from 1,
                                                   as Restormer's test_real_denoising_sidd.py names its results)

Example: python -m datasets_prep.prepare_sidd --src downloads/SIDD_Medium_Srgb --val downloads/SIDD --out datasets/SIDD
"""
import os

import numpy as np
import scipy.io

from datasets_prep.common import (check_count, cut_pairs, image_paths, make_parser, pair_files, parallel_map,
                                  report_strays, run, write_image)

MARKERS = {'noisy': '_NOISY_SRGB_', 'gt': '_GT_SRGB_'}
VAL_KEYS = {'input': 'ValidationNoisyBlocksSrgb', 'target': 'ValidationGtBlocksSrgb'}


def train_pairs(src, drop_unpaired):
    """[(``<id>_<capture>.png``, noisy path, GT path)] of SIDD-Medium sRGB."""
    data = os.path.join(src, 'Data')
    if not os.path.isdir(data):
        raise FileNotFoundError(f'{data}: no such folder (expected SIDD_Medium_Srgb/Data/<scene>/*_NOISY_SRGB_*.PNG)')
    scenes = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
    if not scenes:
        raise ValueError(f'{data}: no scene folders')
    images = {kind: {} for kind in MARKERS}
    for scene in scenes:
        for name, path in image_paths(os.path.join(data, scene)).items():
            stem = os.path.splitext(name)[0]
            for kind, marker in MARKERS.items():
                if marker in stem:
                    images[kind][stem.replace(marker, '_') + '.png'] = path
    return pair_files(images['noisy'], images['gt'], f'{data}/<scene>: NOISY vs GT', drop_unpaired)


def block_shape(path, key):
    """Shape of the array ``key`` of a .mat file, read from its header; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file')
    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    except (NotImplementedError, ValueError, OSError) as error:
        raise ValueError(f'{path}: not a MATLAB file scipy.io.loadmat reads ({error})') from None
    if key not in shapes:
        raise ValueError(f'{path}: no array {key} (it holds {sorted(shapes)})')
    if len(shapes[key]) != 5 or shapes[key][-1] != 3:
        raise ValueError(f'{path}: {key} has shape {shapes[key]}, expected (blocks, patches, height, width, 3)')
    return shapes[key]


def write_validation(val, out, expect):
    paths = {kind: os.path.join(val, f'{key}.mat') for kind, key in VAL_KEYS.items()}
    shapes = {kind: block_shape(paths[kind], key) for kind, key in VAL_KEYS.items()}
    if shapes['input'] != shapes['target']:
        raise ValueError(f'{paths["input"]} {shapes["input"]} and {paths["target"]} {shapes["target"]} differ in shape')
    blocks, patches = shapes['input'][:2]
    check_count(blocks * patches, 'SIDD_val', paths['input'], expect)
    names = [f'{block:04d}_{patch:02d}.png' for block in range(1, blocks + 1) for patch in range(1, patches + 1)]
    for kind, key in VAL_KEYS.items():
        folder = os.path.join(out, 'val', kind)
        missing = [(index, name) for index, name in enumerate(names) if not os.path.exists(os.path.join(folder, name))]
        if missing:
            array = scipy.io.loadmat(paths[kind])[key]
            if array.dtype != np.uint8:
                raise ValueError(f'{paths[kind]}: {key} holds {array.dtype}, expected uint8')
            images = array.reshape(-1, *array.shape[2:])  # (block, patch) in the order of ``names``

            def write(entry):
                write_image(os.path.join(folder, entry[1]), images[entry[0]][..., ::-1])  # RGB -> BGR for OpenCV

            parallel_map(write, missing, desc=f'SIDD val {kind}')
        report_strays(folder, names)
    print(f'SIDD val: {len(names)} pairs in {os.path.join(out, "val")}/{{input,target}}')


def prepare(args):
    if not (args.src or args.val):
        raise ValueError('nothing to do: give --src and/or --val')
    if args.src:
        pairs = train_pairs(args.src, args.drop_unpaired)
        check_count(len(pairs), 'SIDD_train', os.path.join(args.src, 'Data'), args.expect)
        folders = [os.path.join(args.out, 'train', kind) for kind in ('input_crops', 'target_crops')]
        cut_pairs(pairs, folders, args.crop_size, args.step, args.workers, 'SIDD train crops')
    if args.val:
        write_validation(args.val, args.out, args.expect)


def main(argv=None):
    parser = make_parser(__doc__, pairs=True, crop=(512, 384))
    parser.add_argument('--src', help='the unpacked SIDD_Medium_Srgb folder')
    parser.add_argument('--val', help='folder of ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat')
    parser.add_argument('--out', default='datasets/SIDD', help='output folder (default: %(default)s)')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
