"""Losses of basicsr-kd: every ``*_loss.py`` here registers into BasicSR's LOSS_REGISTRY."""
from kd_models.plugin import import_registered_files  # also installs the BasicSR 1.4.2 compatibility fixes

_loss_modules = import_registered_files(__name__, __file__, '_loss.py')
