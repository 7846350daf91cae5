"""Build the SR test sets Set5, Set14, B100 (BSD100), Urban100 and Manga109 from their HR images: HR cropped to a
multiple of every scale, LR by BasicSR's MATLAB-style bicubic imresize.

Expects the HR images of each set under --src (EDSR's https://cv.snu.ac.kr/research/EDSR/benchmark.tar, unpacked,
holds Set5, Set14, B100 and Urban100 this way; Manga109 comes from http://www.manga109.org/ or an SR benchmark
collection):

    <src>/<Set>/HR/<name>.png (or .bmp, .jpg, ...)   or   <src>/<Set>/<name>.png     B100 may be named BSD100
    Set5: 5 images, Set14: 14, B100: 100, Urban100: 100, Manga109: 109 (checked)

Writes (one HR folder serves every scale; HR and LR file names are identical, so filename_tmpl '{}' pairs them):

    <out>/<Set>/HR/<name>.png                 HR cropped (top-left) to a multiple of every scale: 12 for 2, 3, 4
    <out>/<Set>/LR_bicubic/X<s>/<name>.png    imresize(HR, 1/s) rounded to uint8

Grey images get three identical channels, as BasicSR reads them. A re-run writes only the missing files.

Example: python -m datasets_prep.prepare_sr_benchmarks --src downloads/benchmark --out datasets/benchmark
"""
import functools
import os

from datasets_prep.common import (check_count, crop_and_downscale, image_paths, make_parser, parallel_map, read_image,
                                  report_strays, run, write_image)
from basicsr_kd.preflight import image_names

SETS = {'Set5': ('Set5', ), 'Set14': ('Set14', ), 'B100': ('B100', 'BSD100'), 'Urban100': ('Urban100', ),
        'Manga109': ('Manga109', )}


def find_hr_folder(src, name):
    """The first of ``<src>/<alias>/HR`` and ``<src>/<alias>`` that holds images."""
    candidates = [os.path.join(src, alias, sub) for alias in SETS[name] for sub in ('HR', '')]
    for folder in candidates:
        if os.path.isdir(folder) and image_names(folder):
            return folder
    raise FileNotFoundError(f'{name}: no HR images in any of {candidates}')


def build_image(item, out_folders, scales):
    """Write the cropped HR image and its LR images that are missing. ``item``: (stem, source path)."""
    stem, path = item
    outputs = {scale: os.path.join(folder, f'{stem}.png') for scale, folder in out_folders.items()}
    if not all(os.path.exists(output) for output in outputs.values()):
        hr, lrs = crop_and_downscale(read_image(path), scales)
        for scale, output in outputs.items():
            if not os.path.exists(output):
                write_image(output, hr if scale == 1 else lrs[scale])
    return stem


def prepare(args):
    if os.path.realpath(args.src) == os.path.realpath(args.out):
        raise ValueError(f'--src and --out are both {args.out}: write the prepared sets to another folder')
    scales = sorted(set(args.scales))
    for name in args.sets:
        folder = find_hr_folder(args.src, name)
        images = image_paths(folder)
        check_count(len(images), name, folder, args.expect)
        stems = {os.path.splitext(file_name)[0]: path for file_name, path in images.items()}
        if len(stems) != len(images):
            raise ValueError(f'{folder}: two images share a name with different extensions')
        out_folders = {1: os.path.join(args.out, name, 'HR')}
        out_folders.update({s: os.path.join(args.out, name, 'LR_bicubic', f'X{s}') for s in scales})
        job = functools.partial(build_image, out_folders=out_folders, scales=scales)
        names = [f'{stem}.png' for stem in parallel_map(job, sorted(stems.items()), args.workers, name)]
        for out_folder in out_folders.values():
            report_strays(out_folder, names)
        print(f'{name}: {len(names)} images from {folder} -> {os.path.join(args.out, name)} (HR, LR x{scales})')


def main(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument('--src', required=True, help='folder holding <Set>/HR (or <Set>/*.png) per set')
    parser.add_argument('--out', default='datasets/benchmark', help='output folder (default: %(default)s)')
    parser.add_argument('--sets', nargs='+', choices=list(SETS), default=list(SETS), help='default: all five')
    parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], help='LR scales (default: 2 3 4)')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
