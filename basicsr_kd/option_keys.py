"""Every key of an option file must be one that BasicSR 1.4.2 or the chosen model, network, loss or dataset reads:
a misspelt key (``train.teacher_autocst``) would otherwise silently turn off what it names.

A spec is a nested dict: a key maps to ``None`` (any value), to a nested spec, to one of the markers below, or to a
tuple of loss class names (a loss dict of one of those kinds, which the model checks: ``KDBaseModel.loss_kinds``);
keys may be shell patterns (``pretrain_network_*``). Where the keys come from:

- BasicSR 1.4.2's own (``BASICSR_KEYS``): read from its source, file by file (``basicsr/train.py``, ``test.py``,
  ``utils/options.py``, ``utils/logger.py``, ``models/base_model.py``, ``models/sr_model.py``, ``data/__init__.py``,
  ``data/paired_image_dataset.py``, ``data/single_image_dataset.py``, ``data/prefetch_dataloader.py``,
  ``models/lr_scheduler.py``); ``tests/basicsr_options/`` holds copies of BasicSR's own option files, which must pass.
- Networks (``network_*``), losses (``train.*_opt``) and schedulers: ``type`` plus the arguments of the registered
  class's constructor (any key when it takes ``**kwargs``). ``train.optim_*``: the torch.optim class's arguments.
- Models: the ``option_keys`` class attribute of the model and of every class it inherits from, declared next to
  the code that reads them (``tests/test_option_keys.py`` records what a model reads and fails on an undeclared key).

``strict_options: false`` at the top of an option file turns the errors into warnings (for forks with keys of
their own).

``check_number_strings``: YAML 1.1 (PyYAML, BasicSR's reader) reads a number with an exponent as a number only with a
dot and a signed exponent: ``1e-6``, ``5e3`` and ``1.0e6`` are strings. Such a string (or a quoted number) where a
number is expected is refused too: in the networks, ``train``, ``val`` and ``logger``, except under keys marked
``text`` (module and file paths, names).
"""
import difflib
import fnmatch
import inspect
import re
import warnings

import torch
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

# Markers: a dict whose keys are those of its ``type``, or free text (plain words, so that a model file can declare
# them without importing this module).
MARKERS = NETWORK, LOSS, OPTIMIZER, SCHEDULER, DATASET, METRICS, TEXT = (
    'network', 'loss', 'optimizer', 'scheduler', 'dataset', 'metrics', 'text')


# The dataset and data-loader keys BasicSR reads (build_dataloader, its prefetchers, the paired and single datasets,
# parse_options); other dataset types are checked only for these plus any key (their readers are not known here).
DATASET_KEYS = {
    key: None
    for key in ('name', 'type', 'phase', 'scale', 'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl',
                'io_backend', 'gt_size', 'use_hflip', 'use_rot', 'mean', 'std', 'color', 'batch_size_per_gpu',
                'num_worker_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode', 'num_prefetch_queue', 'pin_memory',
                'persistent_workers')
}
BASICSR_DATASETS = ('PairedImageDataset', 'SingleImageDataset')

BASICSR_KEYS = {
    'name': None, 'model_type': None, 'scale': None, 'num_gpu': None, 'manual_seed': None, 'dist_params': None,
    'find_unused_parameters': None, 'network_*': NETWORK, 'datasets': {'*': DATASET},
    # set by parse_options, never in a file, but a parsed option dict is checked too
    'is_train': None, 'dist': None, 'rank': None, 'world_size': None, 'auto_resume': None, 'root_path': None,
    'path': {  # plus pretrain_network_<name>, param_key_<name> and strict_load_<name> of each network_<name>
        'resume_state': None,
        'ignore_resume_networks': None, 'experiments_root': None, 'models': None, 'training_states': None,
        'log': None, 'visualization': None, 'results_root': None
    },
    'train': {
        'ema_decay': None, 'optim_*': OPTIMIZER, 'scheduler': SCHEDULER, 'total_iter': None, 'warmup_iter': None,
        'pixel_opt': LOSS, 'perceptual_opt': LOSS
    },
    'val': {'val_freq': None, 'save_img': None, 'suffix': TEXT, 'pbar': None, 'metrics': METRICS},
    'logger': {'print_freq': None, 'save_checkpoint_freq': None, 'use_tb_logger': None,
               'wandb': {'project': TEXT, 'resume_id': TEXT}},
}
# What the basicsr-kd plumbing itself reads (preflight, evaluation): not a model's keys.
PLUGIN_KEYS = {'strict_options': None}


def merge(*specs):
    """One spec with the keys of all of ``specs`` (nested specs merged key by key)."""
    merged = {}
    for spec in specs:
        for key, value in spec.items():
            if isinstance(merged.get(key), dict) and isinstance(value, dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def class_keys(cls):
    """The keys a model or dataset class reads: its ``option_keys`` and those of every class it inherits from."""
    return merge(*(vars(base).get('option_keys', {}) for base in reversed(cls.__mro__)))


def option_spec(opt):
    """The spec an option dict is checked against: BasicSR's keys plus its model's."""
    model_type = opt.get('model_type')
    model_class = MODEL_REGISTRY.get(model_type) if model_type in MODEL_REGISTRY else None
    names = [key[len('network_'):] for key in opt if str(key).startswith('network_')]
    weights = {f'{prefix}_{name}': None for name in names
               for prefix in ('pretrain_network', 'param_key', 'strict_load')}
    return merge(BASICSR_KEYS, PLUGIN_KEYS, {'path': weights}, class_keys(model_class) if model_class else {})


def constructor_keys(obj):
    """The keyword arguments a class or function takes (None: it takes **kwargs, any key)."""
    parameters = inspect.signature(obj).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name: None for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def marker_spec(marker, value):
    """The spec of a dict whose keys are decided by its ``type`` (None: any key)."""
    if not isinstance(value, dict):
        return None
    kind = value.get('type')
    if marker == DATASET:
        if kind in BASICSR_DATASETS:
            return DATASET_KEYS
        dataset = DATASET_REGISTRY.get(kind) if kind in DATASET_REGISTRY else None
        from basicsr.data.paired_image_dataset import PairedImageDataset
        if isinstance(dataset, type) and issubclass(dataset, PairedImageDataset) and hasattr(dataset, 'option_keys'):
            return merge(DATASET_KEYS, class_keys(dataset))  # one of ours: PairedImageDataset's keys and its own
        return None
    if marker in (METRICS, TEXT):
        return None  # BasicSR's metric functions all take **kwargs; text is any value
    registry = {NETWORK: ARCH_REGISTRY, LOSS: LOSS_REGISTRY}.get(marker)
    if registry is not None:
        name = kind if kind in registry else f'{kind}_basicsr'  # our backbones register with BasicSR's suffix
        if name not in registry:  # an unknown type is preflight's error, with its own message
            return None
        keys = constructor_keys(registry.get(name))
    elif marker == OPTIMIZER:
        optimizer = getattr(torch.optim, kind, None) if kind else None
        keys = constructor_keys(optimizer) if isinstance(optimizer, type) else None
    else:  # SCHEDULER: BasicSR's SRModel builds these two for the four names it accepts
        from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR
        scheduler = {'MultiStepLR': MultiStepRestartLR, 'MultiStepRestartLR': MultiStepRestartLR,
                     'CosineAnnealingRestartLR': CosineAnnealingRestartLR}.get(kind)
        keys = constructor_keys(scheduler) if scheduler else None
    return None if keys is None else {'type': None, **{k: None for k in keys if k not in ('self', 'optimizer')}}


def matching(spec, key):
    """The spec entry of ``key`` (exact, else the first pattern it matches), and whether there is one."""
    if key in spec:
        return spec[key], True
    for pattern, value in spec.items():
        if any(c in pattern for c in '*?[') and fnmatch.fnmatchcase(key, pattern):
            return value, True
    return None, False


def unknown_keys(opt, spec, where=''):
    """[(path of an unknown key, closest known keys)] of a nested option dict against a spec."""
    found = []
    for key, value in opt.items():
        path = f'{where}.{key}' if where else str(key)
        entry, known = matching(spec, str(key))
        if not known:
            close = difflib.get_close_matches(str(key), [k for k in spec if not any(c in k for c in '*?[')], n=3,
                                              cutoff=0.6)
            found.append((path, close))
        elif isinstance(entry, (str, tuple)):  # a marker (a tuple: a loss): the keys depend on the value's type
            entry = marker_spec(LOSS if isinstance(entry, tuple) else entry, value)
            if entry is not None:
                found += unknown_keys(value, entry, path)
        elif isinstance(entry, dict) and isinstance(value, dict):
            found += unknown_keys(value, entry, path)
    return found


class UnknownOptionKey(ValueError):
    """An option key that neither BasicSR nor the chosen model, network, loss or dataset reads."""


def check_option_keys(opt, source='the options'):
    """Raise UnknownOptionKey for every unknown key of ``opt`` (a warning instead with ``strict_options: false``)."""
    found = unknown_keys(opt, option_spec(opt))
    if not found:
        return
    lines = [f'{path}' + (f' (did you mean {", ".join(close)}?)' if close else '') for path, close in found]
    message = (f'{source}: unknown option key{"s" if len(lines) > 1 else ""} {"; ".join(lines)}. Neither BasicSR '
               f'1.4.2 nor {opt.get("model_type")} and its networks, losses and datasets read '
               f'{"them" if len(lines) > 1 else "it"}; a fork with keys of its own can set strict_options: false.')
    if opt.get('strict_options', True):
        raise UnknownOptionKey(message)
    warnings.warn(message)


# A number PyYAML reads as a string: 1e-6, 5e3, 1.0e6, .5e3 (no dot or no exponent sign), or a quoted '0.5'
NUMBER_TEXT = re.compile(r'[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?')
NUMBER_SECTIONS = ('network_*', 'train', 'val', 'logger')  # the sections whose strings are words, never numbers


def number_advice(text):
    """How to write ``text``, a number PyYAML reads as a string, so that it reads as a number."""
    mantissa, _, exponent = text.lower().partition('e')
    if not exponent:
        return 'write it without quotes'
    missing = [part for part, given in (('a dot', '.' in mantissa), ('a sign in the exponent', exponent[0] in '+-'))
               if not given]
    fixed = f'{mantissa if "." in mantissa else mantissa + ".0"}e{exponent if exponent[0] in "+-" else "+" + exponent}'
    return f'YAML reads {text} without {" and ".join(missing)} as text; write {fixed} or !!float {text}'


def number_strings(opt, spec):
    """[(path, value)] of the strings of ``opt`` that read as numbers, in ``NUMBER_SECTIONS`` outside keys the
    spec marks ``text``."""
    found = []

    def walk(value, entry, where):
        if entry == TEXT:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, matching(entry, str(key))[0] if isinstance(entry, dict) else None, f'{where}.{key}')
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, entry, f'{where}[{index}]')
        elif isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()):
            found.append((where, value))

    for key, value in opt.items():
        if any(fnmatch.fnmatchcase(str(key), section) for section in NUMBER_SECTIONS):
            walk(value, matching(spec, str(key))[0], str(key))
    return found


def check_number_strings(opt, source='the options'):
    """Raise ValueError for a string of ``opt`` that reads as a number (``number_strings``): a loss weight, learning
    rate or temperature written ``1e-6`` would reach the code as text."""
    found = number_strings(opt, option_spec(opt))
    if not found:
        return
    lines = [f'{path} = {value!r} is a string: {number_advice(value.strip())}' for path, value in found]
    raise ValueError(f'{source}: ' + '; '.join(lines))


def flat_keys(spec, where=''):
    """The dotted key paths of a spec (markers shown as ``<network>`` etc., loss kinds as ``<loss: A | B>``)."""
    for key, value in spec.items():
        path = f'{where}.{key}' if where else key
        if isinstance(value, dict):
            yield from flat_keys(value, path)
        elif isinstance(value, tuple):
            yield f'{path} <loss: {" | ".join(value)}>'
        else:
            yield path + (f' <{value}>' if value else '')


def main():
    """Print the keys each of our models reads besides BasicSR's, and BasicSR's own (README points here)."""
    from basicsr_kd.registration import plugin_names, register_plugin
    register_plugin()
    print(f'BasicSR 1.4.2 ({len(list(flat_keys(BASICSR_KEYS)))} keys, plus path.pretrain_network_<name>, '
          'param_key_<name> and strict_load_<name> of each network_<name>):')
    print('  ' + '\n  '.join(flat_keys(BASICSR_KEYS)))
    for name in plugin_names(MODEL_REGISTRY):
        keys = list(flat_keys(class_keys(MODEL_REGISTRY.get(name))))
        print(f'{name} ({len(keys)} keys besides BasicSR\'s):\n  ' + ('\n  '.join(keys) or '-'))


if __name__ == '__main__':
    main()
