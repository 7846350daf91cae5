"""Checks of an option file that ``train.py``/``test.py`` run before BasicSR starts, so that a wrong type, key,
number written as text (``1e-6``), data folder or patch size fails with a message naming the option instead of a
traceback from inside a data loader."""
import os

import yaml
from PIL import Image
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from .option_keys import check_number_strings, check_option_keys
from .registration import plugin_names

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.npy')


def check_option_file(opt_path, data=True):
    """Parse ``opt_path``, check its types, its keys, its numbers and (``data``) its data folders; raise KeyError/
    ValueError/FileNotFoundError naming the option."""
    if not os.path.isfile(opt_path):
        raise FileNotFoundError(f'-opt {opt_path}: no such option file')
    with open(opt_path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    check_registered_types(opt)
    check_option_keys(opt, opt_path)
    check_number_strings(opt, opt_path)
    for phase, dataset_opt in (opt.get('datasets') or {}).items() if data else ():
        names = check_dataset_folders(dataset_opt, f'datasets.{phase}')
        check_disk_patch_size(dataset_opt, f'datasets.{phase}', names.get('dataroot_gt'))


def check_registered_types(opt):
    """Every ``type`` BasicSR looks up in a registry must be registered; KeyError with the option, BasicSR's message
    and the names basicsr-kd registers in that registry."""
    train, val = opt.get('train') or {}, opt.get('val') or {}
    found = [('model_type', MODEL_REGISTRY, opt.get('model_type'))]
    found += [(f'{key}.type', ARCH_REGISTRY, net.get('type')) for key, net in opt.items()
              if key.startswith('network_') and isinstance(net, dict)]
    found += [(f'datasets.{phase}.type', DATASET_REGISTRY, dataset.get('type'))
              for phase, dataset in (opt.get('datasets') or {}).items()]
    found += [(f'train.{key}.type', LOSS_REGISTRY, loss.get('type')) for key, loss in train.items()
              if key.endswith('_opt') and isinstance(loss, dict)]
    found += [(f'val.metrics.{name}.type', METRIC_REGISTRY, metric.get('type'))
              for name, metric in (val.get('metrics') or {}).items()]
    for option, registry, name in found:
        if name is not None:
            try:
                registry.get(name)
            except KeyError as error:
                ours = ', '.join(plugin_names(registry)) or 'nothing'
                raise KeyError(f'{option} = {name}: {error.args[0]} basicsr-kd registers in it: {ours}.') from None


def image_names(folder):
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


def on_disk(dataset_opt):
    """Whether a dataset reads image files (BasicSR's default backend), not LMDB or memory."""
    return (dataset_opt.get('io_backend') or {}).get('type', 'disk') == 'disk'


def check_dataset_folders(dataset_opt, where):
    """Folders on disk must exist and hold images; GT and LQ folders read without meta info must pair up. Returns
    {dataroot key: its image names} (empty for a set not on disk)."""
    if not on_disk(dataset_opt):
        return {}
    roots = {key: dataset_opt[key] for key in ('dataroot_gt', 'dataroot_lq') if dataset_opt.get(key)}
    names = {}
    for key, folder in roots.items():
        folder = os.path.expanduser(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'{where}.{key} = {folder}: no such folder (see datasets_prep/ to build it)')
        names[key] = image_names(folder)
        if not names[key]:
            raise ValueError(f'{where}.{key} = {folder}: the folder holds no images')
    if len(names) == 2 and not dataset_opt.get('meta_info_file'):
        template = dataset_opt.get('filename_tmpl', '{}')
        lq_names = set(names['dataroot_lq'])
        unpaired = [n for n in names['dataroot_gt']
                    if template.format(os.path.splitext(n)[0]) + os.path.splitext(n)[1] not in lq_names]
        if unpaired or len(lq_names) != len(names['dataroot_gt']):
            raise ValueError(f'{where}: dataroot_gt ({len(names["dataroot_gt"])} images) and dataroot_lq '
                             f'({len(lq_names)} images) do not pair with filename_tmpl "{template}"; GT images '
                             f'without an LQ partner: {unpaired[:5]}')
    return names


def image_size(path):
    """(height, width) of an image from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except OSError as error:
        raise ValueError(f'{path}: not a readable image ({error})') from None


def patch_size_to_check(dataset_opt):
    """The ``gt_size`` every GT image of a set must reach, or None: no patches, or the set pads smaller pairs
    (``pad_to_gt_size``, KDPairedImageDataset)."""
    return None if dataset_opt.get('pad_to_gt_size') else dataset_opt.get('gt_size')


def check_patch_size(gt_sizes, gt_size, where):
    """Every GT image must be at least ``gt_size`` on both sides: BasicSR's ``paired_random_crop`` would stop the run
    at the first smaller one, possibly hours in. ``gt_sizes``: [(name, (height, width))]."""
    small = [(name, size) for name, size in gt_sizes if gt_size and min(size) < gt_size]
    if small:
        name, (h, w) = small[0]
        raise ValueError(f'{where}.gt_size = {gt_size}: {len(small)} GT images are smaller, e.g. {name}: {h}x{w}; '
                         'crop larger sub-images or lower gt_size')


def check_disk_patch_size(dataset_opt, where, gt_names=None):
    """``check_patch_size`` for a set on disk, from the image headers (``gt_names``: the GT folder's images, as
    ``check_dataset_folders`` listed them; listed here when None)."""
    gt_size, folder = patch_size_to_check(dataset_opt), dataset_opt.get('dataroot_gt')
    if gt_size and folder and on_disk(dataset_opt):
        folder = os.path.expanduser(folder)
        names = image_names(folder) if gt_names is None else gt_names
        check_patch_size([(name, image_size(os.path.join(folder, name))) for name in names], gt_size, where)


def main(argv=None):
    """``python -m basicsr_kd.preflight options/a.yml [...] [--data]``: the checks train.py runs before it starts
    (types, keys and numbers; data folders with --data), one line per file; exit status 1 if any fails."""
    import argparse
    import sys
    from .registration import register_plugin
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('files', nargs='+')
    parser.add_argument('--data', action='store_true', help='also check the data folders and patch sizes')
    args = parser.parse_args(argv)
    register_plugin()
    failed = 0
    for path in args.files:
        try:
            check_option_file(path, data=args.data)
            print(f'ok    {path}')
        except (KeyError, ValueError, FileNotFoundError) as error:
            failed += 1
            print(f'FAIL  {path}: {error.args[0] if error.args else error}')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
