"""Losses of basicsr-kd: every ``*_loss.py`` here registers into BasicSR's LOSS_REGISTRY."""
from basicsr_kd.registration import import_registered_files  # basicsr_kd first makes basicsr importable

_loss_modules = import_registered_files(__name__, __file__, '_loss.py')
