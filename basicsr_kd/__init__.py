"""basicsr-kd's plumbing: BasicSR 1.4.2 compatibility fixes, plugin registration, option checks, entry points,
teacher manifest, results table and the CPU demo. The networks, losses and models are in kd_archs/, kd_losses/ and
kd_models/ (the files a BasicSR fork copies).

Importing this package does one thing: the stand-in that lets BasicSR 1.4.2 be imported at all with torchvision >=
0.17 (``basicsr.data.degradations`` imports ``rgb_to_grayscale`` from the removed
``torchvision.transforms.functional_tensor``). The fixes that change BasicSR's behaviour are applied only by
``basicsr_kd.compat.patch_basicsr()``, which the entry points call.
"""
import importlib.util
import sys
import types

import torchvision.transforms.functional as tv_functional

FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'


def install_functional_tensor_stand_in():
    """Register a stand-in for the module torchvision 0.17 removed, unless torchvision still has it."""
    if FUNCTIONAL_TENSOR in sys.modules or importlib.util.find_spec(FUNCTIONAL_TENSOR) is not None:
        return
    stand_in = types.ModuleType(FUNCTIONAL_TENSOR)
    stand_in.rgb_to_grayscale = tv_functional.rgb_to_grayscale
    sys.modules[FUNCTIONAL_TENSOR] = stand_in


install_functional_tensor_stand_in()
