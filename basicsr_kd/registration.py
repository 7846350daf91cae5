"""How basicsr-kd plugs into BasicSR: scanners that import our registered files, as BasicSR's own scanners do."""
import importlib
import os

from basicsr.utils import scandir


def import_registered_files(package, package_file, suffix):
    """Import every ``*<suffix>`` module beside ``package_file``, as BasicSR's own scanners do."""
    folder = os.path.dirname(os.path.abspath(package_file))
    names = sorted(os.path.splitext(name)[0] for name in scandir(folder) if name.endswith(suffix))
    return [importlib.import_module(f'{package}.{name}') for name in names]


def plugin_names(registry):
    """Names in ``registry`` whose object comes from a basicsr-kd file (``kd_*``), wherever it was copied."""
    return sorted(name for name, obj in registry if obj.__module__.rsplit('.', 1)[-1].startswith('kd_'))


def register_plugin():
    """Import kd_archs, kd_losses and kd_models: every network, loss and model of basicsr-kd is then registered."""
    import kd_archs  # noqa: F401
    import kd_losses  # noqa: F401
    import kd_models  # noqa: F401
