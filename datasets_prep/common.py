"""Helpers shared by the data preparation scripts: listing and pairing images, official counts, sub-image grids, HR
crop and bicubic LR, atomic writes, a parallel map with a progress bar and the command-line frame."""
import argparse
import contextlib
import functools
import math
import os
import shutil
from multiprocessing import Pool

import cv2
from tqdm import tqdm

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.data.transforms import mod_crop
from datasets_prep.make_demo_sr import bicubic_downscale  # MATLAB-style bicubic imresize, as BasicSR's scripts
from basicsr_kd.preflight import image_names, image_size  # noqa: F401  (image_size: re-exported)

# Image counts of the public archives. A tuple lists every count a public download is known to have.
OFFICIAL_COUNTS = {
    'DIV2K_train': 800,
    'DIV2K_valid': 100,
    'Set5': 5,
    'Set14': 14,
    'B100': 100,
    'Urban100': 100,
    'Manga109': 109,
    'GoPro_train': 2103,
    'GoPro_test': 1111,
    'HIDE': 2025,
    'Rain13K': (13712, 13711),  # the papers' count; the MPRNet/Restormer download holds 13,711 (swz30/MPRNet#74)
    'Rain100H': 100,
    'Rain100L': 100,
    'Test100': (100, 98),  # the MPRNet/Restormer download holds 98, as MSPFN used (swz30/MPRNet#23)
    'Test1200': 1200,
    'Test2800': 2800,
    'Rain1400': 1400,  # the DDN test set (Fu et al., CVPR 2017): 14 rain types of 100 scenes
    'SIDD_train': 320,
    'SIDD_val': 1280,
}
PNG_COMPRESSION = 3  # cv2.IMWRITE_PNG_COMPRESSION of written images, as BasicSR's extract_subimages.py


def list_images(folder):
    """Sorted image file names of ``folder``; FileNotFoundError / ValueError naming the folder when it is missing or
    holds no image."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{folder}: no such folder')
    names = image_names(folder)
    if not names:
        raise ValueError(f'{folder}: the folder holds no images')
    return names


def image_paths(folder):
    """{file name: path} of the images in ``folder`` (see ``list_images``)."""
    return {name: os.path.join(folder, name) for name in list_images(folder)}


def check_count(count, dataset, where, expect=True):
    """ValueError naming ``where`` when ``count`` is not an official count of ``dataset`` (a key of OFFICIAL_COUNTS).

    Args:
        count (int): Images (or pairs) found.
        dataset (str): Key of OFFICIAL_COUNTS.
        where (str): The folder (or description) the count comes from, for the message.
        expect (bool): False skips the check (tests and custom subsets).
    """
    official = OFFICIAL_COUNTS[dataset]
    official = official if isinstance(official, tuple) else (official, )
    if expect and count not in official:
        raise ValueError(f'{where}: found {count} images (pairs), but the official {dataset} has '
                         f'{" or ".join(f"{n:,}" for n in official)}; an incomplete download or a wrong folder? '
                         '(--expect-counts off accepts any count)')


def pair_files(inputs, targets, where, drop_unpaired=False, extra_targets=False):
    """Pair two {name: path} dicts by name.

    Args:
        inputs (dict): {name: path} of the degraded images.
        targets (dict): {name: path} of the clean images.
        where (str): What is paired (e.g. '<folder>: input vs target'), for messages.
        drop_unpaired (bool): Keep the pairs and print how many images were left out instead of failing.
        extra_targets (bool): Targets without an input are expected (e.g. HIDE's GT folder also holds training GT).

    Returns:
        list[tuple]: (name, input path, target path), sorted by name.
    """
    lonely_inputs = sorted(set(inputs) - set(targets))
    lonely_targets = [] if extra_targets else sorted(set(targets) - set(inputs))
    if lonely_inputs or lonely_targets:
        message = (f'{where}: {len(lonely_inputs)} inputs without a target {lonely_inputs[:5]}, '
                   f'{len(lonely_targets)} targets without an input {lonely_targets[:5]}')
        if not drop_unpaired:
            raise ValueError(f'{message} (pairing is by file name; --drop-unpaired keeps only the pairs)')
        print(f'Left out, {message}')
    return [(name, inputs[name], targets[name]) for name in sorted(set(inputs) & set(targets))]


def tile_starts(length, size, step, thresh, where):
    """Starts of the sub-images along one side, as BasicSR's extract_subimages.py: every ``step`` pixels, plus a last
    one flush with the edge when more than ``thresh`` pixels would be left over."""
    if length < size:
        raise ValueError(f'{where}: a side of {length} pixels is smaller than the crop size {size}')
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > thresh:
        starts.append(length - size)
    return starts


def cut_sub_images(stem, shape, sources, size, step, thresh, where):
    """Write the sub-images of one image (and of its partners) that are not on disk yet.

    Args:
        stem (str): Name of the image; sub-image i (from 1, along a row first) is ``<stem>_s<iii>.png``.
        shape (tuple): (height, width) the grid is laid on.
        sources (list[tuple]): (folder, factor, load): ``load()`` returns an image whose sub-images go to ``folder``;
            its grid is the main grid divided by ``factor`` (an LR image of scale ``factor``; 1 for a partner of the
            same size). ``load`` is called only when a sub-image of that folder is missing.
        size (int): Sub-image side on the main grid.
        step (int): Distance between sub-image starts.
        thresh (int): Leftover pixels above which a last sub-image flush with the edge is added.
        where (str): The image's path, for error messages.

    Returns:
        list[str]: File names of the sub-images.
    """
    grid = [(y, x) for y in tile_starts(shape[0], size, step, thresh, where)
            for x in tile_starts(shape[1], size, step, thresh, where)]
    names = [f'{stem}_s{index:03d}.png' for index in range(1, len(grid) + 1)]
    for folder, factor, load in sources:
        missing = [(name, y, x) for name, (y, x) in zip(names, grid) if not os.path.exists(os.path.join(folder, name))]
        if missing:
            img = load()
            for name, y, x in missing:
                write_image(os.path.join(folder, name), img[y // factor:(y + size) // factor,
                                                            x // factor:(x + size) // factor])
    return names


def cut_pair(item, folders, size, step, thresh):
    """``cut_sub_images`` of an (name, input path, target path) pair of equal sizes into (input, target) folders."""
    name, input_path, target_path = item
    shape, target_shape = image_size(input_path), image_size(target_path)
    if target_shape != shape:
        raise ValueError(f'{input_path} (HxW {shape}) and {target_path} (HxW {target_shape}) differ in size')
    sources = [(folders[0], 1, lambda: read_image(input_path)), (folders[1], 1, lambda: read_image(target_path))]
    return cut_sub_images(os.path.splitext(name)[0], shape, sources, size, step, thresh, input_path)


def crop_and_downscale(hr, scales):
    """HR cropped (top-left, BasicSR's ``mod_crop``) to a multiple of every scale, and {scale: bicubic LR} of it."""
    hr = mod_crop(hr, math.lcm(*scales))
    return hr, {scale: bicubic_downscale(hr, scale) for scale in scales}


def read_image(path):
    """An image as 8-bit BGR (grey images get three channels, as BasicSR's ``imfrombytes``); ValueError naming it if
    OpenCV cannot read it."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'{path}: not a readable image')
    return img


def write_image(path, img):
    """Encode ``img`` by its extension and write it atomically (temporary file, then rename): an interrupted run
    never leaves a truncated image that a re-run would take for finished."""
    ok, data = cv2.imencode(os.path.splitext(path)[1], img, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise OSError(f'cannot encode {path}')
    write_bytes(path, data.tobytes())


def write_bytes(path, data):
    """Write ``data`` to ``<path>.tmp``, then rename it to ``path`` (creating the folder)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)


def write_text(path, text):
    """Write ``text`` atomically unless the file already holds it (its time stamp then stays). Returns whether it
    wrote."""
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            if f.read() == text:
                return False
    write_bytes(path, text.encode('utf-8'))
    return True


def link_or_copy(item, folders):
    """Hard-link (or, across file systems, copy) a (name, input path, target path) pair into (input, target) folders
    under ``name``; existing files are kept. Returns the name."""
    name, *paths = item
    for path, folder in zip(paths, folders):
        destination = os.path.join(folder, name)
        if os.path.exists(destination):
            continue
        os.makedirs(folder, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copyfile(path, destination + '.tmp')
            os.replace(destination + '.tmp', destination)
    return name


def link_pairs(pairs, folders, workers, desc):
    """``link_or_copy`` every pair into ``folders`` (input, target); report strays. Returns the names."""
    names = parallel_map(functools.partial(link_or_copy, folders=folders), pairs, workers, desc)
    for folder in folders:
        report_strays(folder, names)
    print(f'{desc}: {len(names)} pairs in {folders[0]} and {folders[1]}')
    return names


def cut_pairs(pairs, folders, size, step, workers, desc, thresh=0):
    """``cut_pair`` every pair into ``folders`` (input crops, target crops); report strays. Returns the crop names.

    The default ``thresh`` 0 puts a last crop flush with every edge, as Restormer's generate_patches_*.py scripts.
    """
    job = functools.partial(cut_pair, folders=folders, size=size, step=step, thresh=thresh)
    names = [name for crops in parallel_map(job, pairs, workers, desc) for name in crops]
    for folder in folders:
        report_strays(folder, names)
    print(f'{desc}: {len(pairs)} pairs -> {len(names)} crops of {size}x{size} in {folders[0]} and {folders[1]}')
    return names


def report_strays(folder, names):
    """Print how many images of ``folder`` are not in ``names`` (left by an earlier run with other settings)."""
    strays = sorted(set(image_names(folder)) - set(names)) if os.path.isdir(folder) else []
    if strays:
        print(f'Warning: {folder} also holds {len(strays)} images this run did not write, e.g. {strays[:3]}; '
              'BasicSR reads every image of a folder: remove them (or the folder) and run again.')


def parallel_map(func, items, workers=1, desc=None):
    """``[func(item) for item in items]`` with a progress bar, in ``workers`` processes when more than one."""
    items = list(items)
    parallel = workers > 1 and len(items) > 1
    with (Pool(min(workers, len(items))) if parallel else contextlib.nullcontext()) as pool:
        mapped = pool.imap(func, items) if parallel else map(func, items)
        return list(tqdm(mapped, total=len(items), desc=desc, unit='image'))


def make_parser(doc, workers=True, counts=True, pairs=False, crop=None):
    """Parser whose help is the script's docstring (layouts and counts), with --workers, --expect-counts, for paired
    sets (``pairs``) --drop-unpaired, and for scripts that cut sub-images --crop-size and --step (defaults ``crop``:
    (size, step))."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if crop:
        parser.add_argument('--crop-size', type=int, default=crop[0], help='sub-image side (default: %(default)s)')
        parser.add_argument('--step', type=int, default=crop[1], help='sub-image distance (default: %(default)s)')
    if workers:
        parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                            help='processes (default: %(default)s)')
    if counts:
        parser.add_argument('--expect-counts', choices=('official', 'off'), default='official',
                            help='check the official image counts (default) or accept any count')
    if pairs:
        parser.add_argument('--drop-unpaired', action='store_true',
                            help='leave out images without a partner of the same name instead of failing')
    return parser


def run(parser, prepare, argv=None):
    """Parse ``argv`` and call ``prepare(args)``; a missing or wrong input ends with exit code 1 and its message."""
    args = parser.parse_args(argv)
    args.expect = getattr(args, 'expect_counts', 'official') == 'official'
    try:
        prepare(args)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f'{parser.prog}: error: {error}\n')
