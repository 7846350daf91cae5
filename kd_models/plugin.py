"""How basicsr-kd plugs into BasicSR: scanners that register our files, and registry errors that name them."""
import importlib
import os

from basicsr.utils import scandir
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY, Registry

REGISTRIES = (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY)


def import_registered_files(package, package_file, suffix):
    """Import every ``*<suffix>`` module beside ``package_file``, as BasicSR's own scanners do."""
    folder = os.path.dirname(os.path.abspath(package_file))
    names = sorted(os.path.splitext(name)[0] for name in scandir(folder) if name.endswith(suffix))
    return [importlib.import_module(f'{package}.{name}') for name in names]


def plugin_names(registry):
    """Names in ``registry`` whose object comes from a basicsr-kd file (``kd_*``), wherever it was copied."""
    return sorted(name for name, obj in registry if obj.__module__.rsplit('.', 1)[-1].startswith('kd_'))


_basicsr_get = Registry.get


def get_naming_plugin_entries(self, name, suffix='basicsr'):
    """``Registry.get`` whose KeyError also lists what basicsr-kd registers in that registry."""
    try:
        return _basicsr_get(self, name, suffix)
    except KeyError as error:
        ours = ', '.join(plugin_names(self)) or 'nothing'
        raise KeyError(f'{error.args[0]} basicsr-kd registers in it: {ours}.') from None


Registry.get = get_naming_plugin_entries
