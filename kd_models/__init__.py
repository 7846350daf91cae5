"""Distillation models of basicsr-kd: every ``*_model.py`` here registers into BasicSR's MODEL_REGISTRY."""
from . import basicsr_compat  # noqa: F401  (must run before anything imports basicsr)
from .plugin import import_registered_files

_model_modules = import_registered_files(__name__, __file__, '_model.py')
