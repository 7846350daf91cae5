"""Our ``kd_*.py`` files, copied into a BasicSR 1.4.2 tree as the README says (archs, losses, models; datasets into
``basicsr/data``), register there and train Logits KD (and FitNet, which needs the copied regressor and hint loss)
with that tree's own ``basicsr/train.py``, with neither our packages nor our compatibility fixes on the path.

The copied tree gets the one-line torchvision fix every BasicSR 1.4.2 tree needs with torchvision >= 0.17: import
``rgb_to_grayscale`` from ``torchvision.transforms.functional`` in ``basicsr/data/degradations.py``, as BasicSR's
own master does.
"""
import ast
import glob
import os
import shutil
import subprocess
import sys

import basicsr
import pytest
import yaml

from conftest import OPTIONS, ROOT, load_option, shrink_option, training_steps

OLD_IMPORT = 'from torchvision.transforms.functional_tensor import rgb_to_grayscale'
NEW_IMPORT = 'from torchvision.transforms.functional import rgb_to_grayscale'


@pytest.fixture(scope='module')
def fork(tmp_path_factory):
    """A copy of the installed BasicSR with our registered files in its archs/models/losses and the torchvision fix."""
    root = tmp_path_factory.mktemp('fork')
    shutil.copytree(os.path.dirname(basicsr.__file__), root / 'basicsr', ignore=shutil.ignore_patterns('__pycache__'))
    for package, folder, pattern in (('kd_archs', 'archs', 'kd_*.py'), ('kd_models', 'models', 'kd_*.py'),
                                     ('kd_losses', 'losses', 'kd_*.py')):
        files = glob.glob(os.path.join(ROOT, package, pattern))
        assert files, f'{package}/{pattern}'
        for path in files:
            target = root / 'basicsr' / ('data' if path.endswith('_dataset.py') else folder)
            assert not (target / os.path.basename(path)).exists(), 'never overwrite upstream files'
            shutil.copy(path, target)
    degradations = root / 'basicsr' / 'data' / 'degradations.py'
    source = degradations.read_text()
    assert source.count(OLD_IMPORT) == 1
    degradations.write_text(source.replace(OLD_IMPORT, NEW_IMPORT))
    return root


def run_in(fork, *args):
    """Run python in the fork with only the fork on PYTHONPATH (not our project root)."""
    env = dict(os.environ, PYTHONPATH=str(fork), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=fork, env=env, capture_output=True, text=True, timeout=600)


def test_only_the_fork_is_importable(fork):
    probe = ('import importlib.util, basicsr; print(basicsr.__file__); '
             'print([name for name in ("kd_archs", "kd_losses", "kd_models") if importlib.util.find_spec(name)])')
    result = run_in(fork, '-c', probe)
    assert result.returncode == 0, result.stderr[-3000:]
    basicsr_file, importable = result.stdout.strip().splitlines()[-2:]
    assert basicsr_file == str(fork / 'basicsr' / '__init__.py')
    assert importable == '[]', 'our packages must not be importable in the fork test'


@pytest.mark.parametrize('option, model_type', [('logits_edsr_x2.yml', 'KDLogitsModel'),
                                                ('fitnet_edsr_x2.yml', 'KDFeatureModel'),
                                                ('facd_edsr_x2.yml', 'KDFACDModel'),
                                                ('slkd_restormer_derain.yml', 'KDSLKDModel'),
                                                ('dckd_star_swinir_x4.yml', 'KDDCKDModel'),
                                                ('mtkd_edsr_x2.yml', 'KDMTKDModel'),
                                                ('skd_restormer_derain.yml', 'KDSKDModel'),
                                                ('wavekd_restormer_derain.yml', 'KDWaveKDModel'),
                                                ('lsfd_edsr_x2.yml', 'KDFeatureModel'),
                                                ('dukd_rcan_x3.yml', 'KDDUKDModel'),
                                                ('csd_edsr_x2.yml', 'KDCSDModel'),
                                                ('dfkd_restormer_derain.yml', 'KDDFKDModel'),
                                                ('pisr_stage1_edsr_x2.yml', 'KDPISRTeacherModel'),
                                                ('pisr_edsr_x2.yml', 'KDPISRStudentModel'),
                                                ('mipkd_swinir_x2.yml', 'KDMiPKDModel')],
                         ids=['logits', 'fitnet', 'facd', 'slkd', 'dckd', 'mtkd', 'skd', 'wavekd', 'lsfd', 'dukd',
                              'csd', 'dfkd', 'pisr stage 1', 'pisr', 'mipkd'])
def test_copied_files_train_with_the_forks_train_py(fork, demo_root, restoration_root, tmp_path, option, model_type):
    name = f'fork_{option.split("_")[0]}'
    opt = load_option(os.path.join(OPTIONS, option))
    opt = shrink_option(opt, restoration_root if opt['scale'] == 1 else demo_root, str(tmp_path), name)
    with open(tmp_path / 'fork.yml', 'w') as f:
        yaml.safe_dump(opt, f)
    result = run_in(fork, 'basicsr/train.py', '-opt', str(tmp_path / 'fork.yml'))
    assert result.returncode == 0, result.stderr[-4000:]
    assert f'Model [{model_type}] is created.' in result.stdout + result.stderr
    assert sorted(training_steps(result)) == [1, 2]
    assert (fork / 'experiments' / name / 'models' / 'net_g_latest.pth').is_file()


def test_every_copied_class_registers_in_the_fork(fork):
    probe = ('import basicsr.archs, basicsr.data, basicsr.losses, basicsr.models; from basicsr.utils.registry import '
             'ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY; print(sorted(name for registry in '
             '(ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY) for name, _ in registry '
             'if name.startswith("KD")))')
    result = run_in(fork, '-c', probe)
    assert result.returncode == 0, result.stderr[-3000:]
    registered = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY
    ours = {name for registry in (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY)
            for name, obj in registry if name.startswith('KD') and obj.__module__.split('.')[0].startswith('kd_')}
    assert ours and ours <= registered, sorted(ours - registered)
