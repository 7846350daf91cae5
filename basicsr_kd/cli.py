"""Entry points ``kd-train`` / ``kd-test`` (and the root ``train.py`` / ``test.py``): BasicSR's own pipelines with
the plugin registered, the 1.4.2 fixes applied, the option file checked first, experiments under the current
directory."""
import os
import sys

from basicsr_kd.compat import accept_torch_local_rank_spelling, patch_basicsr
from basicsr_kd.preflight import check_option_file
from basicsr_kd.registration import register_plugin


def _prepare():
    register_plugin()
    patch_basicsr()
    sys.argv = accept_torch_local_rank_spelling(sys.argv)
    if '-opt' in sys.argv[:-1]:
        check_option_file(sys.argv[sys.argv.index('-opt') + 1])


def train():
    from basicsr.train import train_pipeline
    _prepare()
    train_pipeline(os.getcwd())


def test():
    from basicsr.test import test_pipeline
    _prepare()
    test_pipeline(os.getcwd())
