"""Networks of basicsr-kd: every ``*_arch.py`` here registers into BasicSR's ARCH_REGISTRY."""
from basicsr_kd.registration import import_registered_files  # basicsr_kd first makes basicsr importable

_arch_modules = import_registered_files(__name__, __file__, '_arch.py')
