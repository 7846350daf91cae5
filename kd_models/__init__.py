"""Distillation models of basicsr-kd: every ``*_model.py`` here registers into BasicSR's MODEL_REGISTRY (and every
``*_dataset.py`` into its DATASET_REGISTRY)."""
from basicsr_kd.registration import import_registered_files  # basicsr_kd first makes basicsr importable

_model_modules = import_registered_files(__name__, __file__, '_model.py')
_dataset_modules = import_registered_files(__name__, __file__, '_dataset.py')
