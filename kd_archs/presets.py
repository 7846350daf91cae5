"""The teacher and student networks of the papers' tables (``kd_presets.yml``), by name."""
import copy
import os

import yaml
from basicsr.archs import build_network

PRESETS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kd_presets.yml')


def load_presets(path=PRESETS_FILE):
    """All presets: ``{name: {network_g, params, papers, [spec], [note]}}`` in file order."""
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)


def preset_network(name, presets=None):
    """A copy of preset ``name``'s network dict (``type`` + constructor arguments)."""
    presets = presets or load_presets()
    if name not in presets:
        raise KeyError(f'No preset "{name}" in {PRESETS_FILE}; presets: {", ".join(presets)}')
    return copy.deepcopy(presets[name]['network_g'])


def build_preset(name, **overrides):
    """Build preset ``name`` through BasicSR's ARCH_REGISTRY.

    Args:
        name (str): A preset name, e.g. ``rcan_teacher_x4``.
        **overrides: Constructor arguments that replace the preset's (e.g. ``img_size=64``).

    Returns:
        nn.Module: The network, randomly initialised.
    """
    return build_network({**preset_network(name), **overrides})
