"""Our ``*_arch.py``, ``*_model.py`` and ``*_loss.py`` files, copied into a BasicSR 1.4.2 tree, register there and
train a Logits KD option with that tree's own ``basicsr/train.py`` — without our packages on the path.

The copied tree gets the one-line torchvision fix every BasicSR 1.4.2 tree needs with torchvision >= 0.17
(``rgb_to_grayscale`` from ``torchvision.transforms.functional``), as BasicSR's own master has it.
"""
import glob
import os
import shutil
import subprocess
import sys

import basicsr
import yaml

from conftest import OPTIONS, ROOT, load_option, shrink_option


def test_copied_files_train_in_a_basicsr_tree(demo_root, tmp_path):
    fork = tmp_path / 'fork'
    shutil.copytree(os.path.dirname(basicsr.__file__), fork / 'basicsr', ignore=shutil.ignore_patterns('__pycache__'))
    for package, folder, pattern in (('kd_archs', 'archs', '*_arch.py'), ('kd_models', 'models', '*_model.py'),
                                     ('kd_losses', 'losses', '*_loss.py')):
        for path in glob.glob(os.path.join(ROOT, package, pattern)):
            shutil.copy(path, fork / 'basicsr' / folder)
    degradations = fork / 'basicsr' / 'data' / 'degradations.py'
    degradations.write_text(degradations.read_text().replace('torchvision.transforms.functional_tensor',
                                                             'torchvision.transforms.functional'))
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'fitnet_edsr_x2.yml')), demo_root, str(tmp_path), 'fork')
    with open(tmp_path / 'fork.yml', 'w') as f:
        yaml.safe_dump(opt, f)
    env = dict(os.environ, PYTHONPATH=str(fork), OMP_NUM_THREADS='1')
    probe = subprocess.run([sys.executable, '-c', 'import kd_models'], cwd=fork, env=env, capture_output=True)
    assert probe.returncode != 0, 'our packages must not be importable in the fork test'
    result = subprocess.run([sys.executable, 'basicsr/train.py', '-opt', str(tmp_path / 'fork.yml')], cwd=fork, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (fork / 'experiments' / 'fork' / 'models' / 'net_g_latest.pth').is_file()
    assert 'Model [KDFeatureModel] is created.' in result.stderr + result.stdout
