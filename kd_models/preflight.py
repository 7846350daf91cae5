"""Checks of an option file that ``train.py``/``test.py`` run before BasicSR starts, so that a wrong data folder
fails with a message naming the option instead of a traceback from inside a data loader."""
import os

import yaml
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.npy')


def check_option_file(opt_path):
    """Parse ``opt_path``, check its types and data folders; raise KeyError/ValueError/FileNotFoundError naming the
    option."""
    if not os.path.isfile(opt_path):
        raise FileNotFoundError(f'-opt {opt_path}: no such option file')
    with open(opt_path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    check_registered_types(opt)
    for phase, dataset_opt in (opt.get('datasets') or {}).items():
        check_dataset_folders(dataset_opt, f'datasets.{phase}')


def check_registered_types(opt):
    """Every ``type`` BasicSR looks up in a registry must be registered; KeyError with the option and BasicSR's
    message (which our ``Registry.get`` extends with the names basicsr-kd registers)."""
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
                raise KeyError(f'{option} = {name}: {error.args[0]}') from None


def image_names(folder):
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


def check_dataset_folders(dataset_opt, where):
    """Folders on disk must exist and hold images; GT and LQ folders read without meta info must pair up."""
    if (dataset_opt.get('io_backend') or {}).get('type', 'disk') != 'disk':
        return
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
