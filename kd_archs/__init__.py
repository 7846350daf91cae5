"""Networks of basicsr-kd: every ``*_arch.py`` here registers into BasicSR's ARCH_REGISTRY."""
from kd_models.plugin import import_registered_files  # also installs the BasicSR 1.4.2 compatibility fixes

_arch_modules = import_registered_files(__name__, __file__, '_arch.py')
