"""Build the demo restoration (denoising) set from the photographs of the demo super-resolution set (no download).

Layout (the restoration layout of the prepare_* scripts; input and target files share their names)::

    <root>/{train,val}/target/<name>.png           the clean photograph (the HR image of make_demo_sr)
    <root>/{train,val}/input/<name>.png            the same image with additive white Gaussian noise
    <root>/train_tiles<size>/{input,target}/<name>_s<iii>.png   training tiles (<size> x <size>, no overlap)
    <root>/noise.json                              {"sigma": ..., "seed": ...} of the set on disk

The images, their names and the train/val split are those of ``make_demo_sr`` (``split_photos``, ``load_hr``): 8
training and 4 validation images by default, disjoint down to the source photographs. The noise is i.i.d. Gaussian
of standard deviation ``sigma`` grey levels, independent per pixel and colour channel (the synthetic colour denoising
of DnCNN, SwinIR and Restormer), added to the uint8 image, rounded and clipped to [0, 255] (a PNG holds uint8). It
is drawn from ``numpy.random.default_rng`` seeded by (``seed``, CRC-32 of the image name), so each image's noise does
not depend on the split sizes, and a rebuild with the same seed writes the same files.

Why sigma = 25 by default: the middle level of the three that colour denoising papers report (15, 25, 50). The noisy
input is then about 20 dB PSNR (RGB) and the demo's small networks end 8-10 dB above it, with room between a small
teacher and a smaller student (measured: options/demo/demo_restoration_teacher.yml). Training reads the tiles: a
sample decodes two small PNGs instead of two whole photographs (the demo's data loader runs in the training
process).

Usage: ``python -m datasets_prep.make_demo_restoration [--root datasets/demo_restoration] [--sigma 25] [--seed 0]
[--tile-size 96] [--force]``
"""
import argparse
import json
import os
import shutil
import zlib

import numpy as np

from datasets_prep.common import cut_sub_images, image_size, read_image, write_image
from datasets_prep.make_demo_sr import load_hr, split_photos

SIGMA = 25  # grey levels (of 255); see the module docstring
TILE_SIZE = 96  # side of the training tiles, as the SR demo's HR tiles (basicsr_kd/demo.py --tile-size)
SUBS = ('input', 'target')


def add_noise(clean, sigma, seed, name):
    """``clean`` (uint8) plus Gaussian noise of std ``sigma`` (grey levels), rounded and clipped to uint8; the noise is
    drawn from a generator seeded by (``seed``, CRC-32 of ``name``)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode('utf-8'))])
    noisy = clean.astype(np.float64) + rng.normal(0., sigma, clean.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def split_folders(root, split):
    """{'input': folder, 'target': folder} of a split (``train``, ``val``) or of a tile set (``train_tiles96``)."""
    return {sub: os.path.join(root, split, sub) for sub in SUBS}


def tile_folder(tile_size):
    """The tile set's folder name under the root."""
    return f'train_tiles{tile_size}'


def build_demo_restoration_set(root, sigma=SIGMA, seed=0, num_train=8, num_val=4, tile_size=TILE_SIZE, force=False):
    """Write the demo denoising set under ``root`` (layout: module docstring); a complete set with the same ``sigma``
    and ``seed`` is left alone unless ``force``.

    Args:
        root (str): Output folder.
        sigma (float): Standard deviation of the noise in grey levels (of 255), > 0.
        seed (int): Seed of the noise (with each image's name), >= 0.
        num_train (int): Training images (from the front of ``make_demo_sr.PHOTOS``).
        num_val (int): Validation images (from its back).
        tile_size (int): Side of the training tiles (non-overlapping, a last one flush with each edge).
        force (bool): Rebuild even a complete set.

    Returns:
        dict: {'train': [names], 'val': [names], 'tiles': [tile file names]} (image names without '.png';
        the tiles of ``<root>/train_tiles<tile_size>``).
    """
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f'sigma must be a positive number of grey levels, got {sigma!r}')
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    if not isinstance(tile_size, int) or tile_size < 8:
        raise ValueError(f'tile_size must be an integer of at least 8, got {tile_size!r}')
    splits = split_photos(num_train, num_val)
    names = {split: [entry[0] for entry in entries] for split, entries in splits.items()}
    record = {'sigma': float(sigma), 'seed': seed}
    record_path = os.path.join(root, 'noise.json')
    complete = os.path.isfile(record_path) and all(
        os.path.isdir(folder) and sorted(os.listdir(folder)) == sorted(f'{n}.png' for n in names[split])
        for split in splits for folder in split_folders(root, split).values())
    if complete:
        with open(record_path, encoding='utf-8') as f:
            complete = json.load(f) == record
    if not complete or force:
        write_images(root, splits, sigma, seed, record)
    else:
        print(f'Demo restoration set already complete in {root} ({num_train} train, {num_val} val, sigma {sigma}, '
              f'seed {seed}); use --force to rebuild.')
    return {**names, 'tiles': cut_tiles(root, names['train'], tile_size)}


def write_images(root, splits, sigma, seed, record):
    """Write every split's target and noisy input, then the noise record; earlier builds (their tiles too) go first."""
    for split in splits:  # only what this script writes
        for folder in split_folders(root, split).values():
            shutil.rmtree(folder, ignore_errors=True)
    for entry in os.listdir(root) if os.path.isdir(root) else ():
        if entry.startswith(tile_folder('')):
            shutil.rmtree(os.path.join(root, entry))
    if os.path.exists(os.path.join(root, 'noise.json')):
        os.remove(os.path.join(root, 'noise.json'))
    jobs = [(split, entry) for split, entries in splits.items() for entry in entries]
    for index, (split, (name, function, region)) in enumerate(jobs, 1):
        target = load_hr(function, region)[..., ::-1]  # BGR, as write_image encodes
        folders = split_folders(root, split)
        write_image(os.path.join(folders['target'], f'{name}.png'), target)
        write_image(os.path.join(folders['input'], f'{name}.png'), add_noise(target, sigma, seed, name))
        print(f'[{index}/{len(jobs)}] {split}/{{input,target}}/{name}.png: {target.shape[0]}x{target.shape[1]} (HxW), '
              f'noise sigma {sigma}', flush=True)
    with open(os.path.join(root, 'noise.json'), 'w', encoding='utf-8') as f:
        json.dump(record, f)
    print(f'Demo restoration set written to {root}.')


def cut_tiles(root, train_names, tile_size):
    """Cut the training pairs into ``tile_size`` tiles (only the missing ones); returns the tile file names."""
    images, tiles = split_folders(root, 'train'), split_folders(root, tile_folder(tile_size))
    names = []
    for name in train_names:
        paths = {sub: os.path.join(images[sub], f'{name}.png') for sub in SUBS}
        sources = [(tiles[sub], 1, lambda path=paths[sub]: read_image(path)) for sub in SUBS]
        names += cut_sub_images(name, image_size(paths['target']), sources, tile_size, tile_size, 0, paths['target'])
    print(f'{len(names)} training tiles of {tile_size}x{tile_size} in {os.path.join(root, tile_folder(tile_size))}.')
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='datasets/demo_restoration', help='output folder')
    parser.add_argument('--sigma', type=float, default=SIGMA, help='noise standard deviation in grey levels')
    parser.add_argument('--seed', type=int, default=0, help='seed of the noise')
    parser.add_argument('--num-train', type=int, default=8, help='training images')
    parser.add_argument('--num-val', type=int, default=4, help='validation images')
    parser.add_argument('--tile-size', type=int, default=TILE_SIZE, help='side of the training tiles')
    parser.add_argument('--force', action='store_true', help='rebuild even if the set is complete')
    args = parser.parse_args()
    try:
        build_demo_restoration_set(args.root, args.sigma, args.seed, args.num_train, args.num_val, args.tile_size,
                                   args.force)
    except ValueError as error:
        parser.error(str(error))


if __name__ == '__main__':
    main()
