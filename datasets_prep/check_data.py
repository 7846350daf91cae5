"""Check the prepared data an option file's datasets point at, before training or testing with it.

For every entry under ``datasets:``:

    disk    dataroot_gt / dataroot_lq exist, hold images and pair by name with filename_tmpl (the checks train.py
            runs too, basicsr_kd/preflight.py); the names of a meta_info_file exist in both folders
    lmdb    both databases have data.mdb and meta_info.txt, the same keys, and data.mdb holds every key
    sizes   every LQ image times the option file's ``scale`` has the size of its GT image (disk: image headers;
            lmdb: the shapes in meta_info.txt)
    patches every GT image is at least ``gt_size`` on both sides (BasicSR stops mid-run at a smaller one), unless
            the set pads small pairs (``pad_to_gt_size``, KDPairedImageDataset)
    counts  validation/test sets named like a public benchmark (Set5, Set14, B100 or BSD100, Urban100, Manga109,
            GoPro, HIDE, Rain100H, Rain100L, Test100, Test1200, Test2800, SIDD) have its official image count

Prints one line per dataset and exits with 1 when a check fails.

Example: python -m datasets_prep.check_data -opt options/logits_edsr_x4.yml
"""
import os
import re

import lmdb
import yaml
from tqdm import tqdm

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.utils.options import ordered_yaml
from datasets_prep.common import OFFICIAL_COUNTS, check_count, image_size, make_parser, run
from basicsr_kd.option_keys import check_number_strings, check_option_keys
from basicsr_kd.preflight import check_dataset_folders, check_patch_size, image_names, patch_size_to_check
from basicsr_kd.registration import register_plugin

# dataset ``name`` of a validation/test entry -> key of OFFICIAL_COUNTS
TEST_SETS = {name: name for name in ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109', 'HIDE', 'Rain100H', 'Rain100L',
                                     'Test100', 'Test1200', 'Test2800')}
TEST_SETS.update(BSD100='B100', GoPro='GoPro_test', SIDD='SIDD_val')
META_LINE = re.compile(r'^(\S+) \((\d+),(\d+),(\d+)\)')


def disk_shapes(dataset_opt, where):
    """[(name, GT (h, w) or None, LQ (h, w) or None)] of folders on disk, from the image headers."""
    check_dataset_folders(dataset_opt, where)
    gt, lq = dataset_opt.get('dataroot_gt'), dataset_opt.get('dataroot_lq')
    if not (gt and lq):
        folder = gt or lq
        if not folder:
            raise ValueError(f'{where}: neither dataroot_gt nor dataroot_lq is set')
        return [(name, image_size(os.path.join(folder, name)), None) for name in tqdm(image_names(folder), desc=where)]
    names = image_names(gt)
    meta_info = dataset_opt.get('meta_info_file')
    if meta_info:
        if not os.path.isfile(meta_info):
            raise FileNotFoundError(f'{where}.meta_info_file = {meta_info}: no such file')
        with open(meta_info) as f:
            names = [line.split(' ')[0].strip() for line in f if line.strip()]
    template = dataset_opt.get('filename_tmpl', '{}')
    parts = [os.path.splitext(name) for name in names]
    pairs = [(stem + ext, os.path.join(gt, stem + ext), os.path.join(lq, template.format(stem) + ext))
             for stem, ext in parts]
    missing = [path for _, *paths in pairs for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f'{where}: {len(missing)} images named in {meta_info} are missing, e.g. {missing[:3]}')
    return [(name, image_size(gt_path), image_size(lq_path)) for name, gt_path, lq_path in tqdm(pairs, desc=where)]


def lmdb_meta_info(path, option):
    """{key: (h, w)} of an LMDB from its meta_info.txt, after checking that data.mdb holds every key."""
    if not path.endswith('.lmdb'):
        raise ValueError(f'{option} = {path}: an lmdb io_backend reads folders ending in .lmdb')
    for file in ('data.mdb', 'meta_info.txt'):
        if not os.path.isfile(os.path.join(path, file)):
            raise FileNotFoundError(f'{option} = {path}: no {file} (build it with python -m datasets_prep.make_lmdb)')
    shapes = {}
    with open(os.path.join(path, 'meta_info.txt')) as f:
        for number, line in enumerate(f, 1):
            match = META_LINE.match(line)
            if not match:
                raise ValueError(f'{option} = {path}: meta_info.txt line {number} is not "<key>.png (h,w,c) level"')
            shapes[match.group(1).split('.')[0]] = (int(match.group(2)), int(match.group(3)))
    env = lmdb.open(path, readonly=True, lock=False, readahead=False)
    with env.begin() as txn:
        absent = [key for key in shapes if txn.get(key.encode('ascii')) is None]
    env.close()
    if absent:
        raise ValueError(f'{option} = {path}: data.mdb lacks {len(absent)} keys of meta_info.txt, e.g. {absent[:3]}')
    return shapes


def lmdb_shapes(dataset_opt, where):
    """[(key, GT (h, w) or None, LQ (h, w) or None)] of LMDBs, from their meta_info.txt."""
    found = {key: lmdb_meta_info(dataset_opt[key], f'{where}.{key}') for key in ('dataroot_gt', 'dataroot_lq')
             if dataset_opt.get(key)}
    if not found:
        raise ValueError(f'{where}: neither dataroot_gt nor dataroot_lq is set')
    gt, lq = found.get('dataroot_gt'), found.get('dataroot_lq')
    if gt is not None and lq is not None and set(gt) != set(lq):
        raise ValueError(f'{where}: the GT and LQ LMDBs hold different keys: {sorted(set(gt) ^ set(lq))[:5]}')
    keys = sorted(gt if gt is not None else lq)
    return [(key, gt and gt[key], lq and lq[key]) for key in keys]


def check_dataset(dataset_opt, where, scale, expect=True):
    """Check one entry of ``datasets:``; returns a one-line summary, raises FileNotFoundError/ValueError naming the
    option on a problem."""
    backend = (dataset_opt.get('io_backend') or {}).get('type', 'disk')
    if backend not in ('disk', 'lmdb'):
        return f'io_backend {backend}: not checked'
    entries = lmdb_shapes(dataset_opt, where) if backend == 'lmdb' else disk_shapes(dataset_opt, where)
    if not entries:
        raise ValueError(f'{where}: no images listed')
    paired = entries[0][1] is not None and entries[0][2] is not None
    if paired:
        wrong = [(name, gt, lq) for name, gt, lq in entries if gt != (lq[0] * scale, lq[1] * scale)]
        if wrong:
            name, gt, lq = wrong[0]
            raise ValueError(f'{where}: {len(wrong)} pairs whose GT size is not {scale} x the LQ size, e.g. {name}: '
                             f'GT {gt[0]}x{gt[1]}, LQ {lq[0]}x{lq[1]}')
    if entries[0][1] is not None:  # GT sizes known
        check_patch_size([(name, gt) for name, gt, _ in entries], patch_size_to_check(dataset_opt), where)
    official = TEST_SETS.get(dataset_opt.get('name')) if not where.split('.')[-1].startswith('train') else None
    if official:
        check_count(len(entries), official, where, expect)
    count = f'{len(entries)} {"pairs" if paired else "images"}'
    return f'{count}, {backend}' + (f', official count {OFFICIAL_COUNTS[official]}' if official and expect else '')


def check_option(opt_path, expect=True):
    """Check every dataset of an option file, printing a line each; ValueError when any fails."""
    if not os.path.isfile(opt_path):
        raise FileNotFoundError(f'-opt {opt_path}: no such option file')
    with open(opt_path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    register_plugin()
    check_option_keys(opt, opt_path)  # what train.py checks before anything else
    check_number_strings(opt, opt_path)
    datasets = opt.get('datasets') or {}
    if not datasets:
        raise ValueError(f'{opt_path}: no datasets')
    failed = []
    for phase, dataset_opt in datasets.items():
        label = f'datasets.{phase} ({dataset_opt.get("name", "unnamed")})'
        try:
            print(f'ok    {label}: {check_dataset(dataset_opt, f"datasets.{phase}", opt.get("scale", 1), expect)}')
        except (FileNotFoundError, ValueError) as error:
            failed.append(phase)
            print(f'FAIL  {label}: {error}')
    if failed:
        raise ValueError(f'{opt_path}: {len(failed)} of {len(datasets)} datasets failed: {", ".join(failed)}')


def main(argv=None):
    parser = make_parser(__doc__, workers=False)
    parser.add_argument('-opt', required=True, help='option file (YAML)')
    run(parser, lambda args: check_option(args.opt, args.expect), argv)


if __name__ == '__main__':
    main()
