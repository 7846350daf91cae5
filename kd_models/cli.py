"""Entry points ``kd-train`` / ``kd-test`` (and the root ``train.py`` / ``test.py``): BasicSR's own pipelines with
the plugin registered, the 1.4.2 fixes applied, the option file checked first, experiments under the current
directory."""
import os
import sys

import kd_archs  # noqa: F401  (registers; the first import also applies the BasicSR compatibility fixes)
import kd_losses  # noqa: F401
import kd_models  # noqa: F401
from kd_models.basicsr_compat import accept_torch_local_rank_spelling
from kd_models.preflight import check_option_file


def _prepare_argv():
    sys.argv = accept_torch_local_rank_spelling(sys.argv)
    if '-opt' in sys.argv[:-1]:
        check_option_file(sys.argv[sys.argv.index('-opt') + 1])


def train():
    from basicsr.train import train_pipeline
    _prepare_argv()
    train_pipeline(os.getcwd())


def test():
    from basicsr.test import test_pipeline
    _prepare_argv()
    test_pipeline(os.getcwd())
