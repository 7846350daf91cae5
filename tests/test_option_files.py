"""Every option file parses, every ``type`` resolves, and a shrunk 2-iteration run of it trains through train.py and
writes a student that a plain SRModel loads."""
import glob
import os

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from conftest import OPTIONS, build_model_from, load_option, run_train, shrink_option

TRAINING_OPTIONS = sorted(glob.glob(os.path.join(OPTIONS, '*.yml')) + glob.glob(os.path.join(OPTIONS, 'demo', '*.yml')))
REGISTRIES = (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY)
NOT_REGISTERED = ('io_backend', 'train.optim_g', 'train.scheduler')


def option_id(path):
    return os.path.relpath(path, OPTIONS)


def types_in(node, where=''):
    """(where, type name) of every ``type`` / ``model_type`` in an option dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            inner = f'{where}.{key}' if where else key
            if key in ('type', 'model_type') and isinstance(value, str):
                yield where or key, value
            else:
                yield from types_in(value, inner)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(OPTIONS, '**', '*.yml'), recursive=True)), ids=option_id)
def test_every_type_resolves(path):
    known = {name for registry in REGISTRIES for name, _ in registry}
    opt = load_option(path)
    assert opt['name'] == os.path.splitext(os.path.basename(path))[0], 'name must match the file name'
    for where, name in types_in(opt):
        if not where.endswith(NOT_REGISTERED):
            assert name in known or f'{name}_basicsr' in known, f'{where}: {name} is not registered'


def test_the_method_files_exist():
    names = {option_id(p) for p in TRAINING_OPTIONS}
    expected = {f'{m}_{a}_x{s}.yml' for m, a, s in [('logits', a, s) for a in ('edsr', 'rcan', 'swinir') for s in (2, 3, 4)]
                + [(m, a, s) for m in ('fitnet', 'at', 'fakd') for a in ('edsr', 'rcan') for s in (2, 4)]}
    assert expected <= names


@pytest.mark.parametrize('path', TRAINING_OPTIONS, ids=option_id)
def test_two_iterations_train_and_the_student_loads_as_srmodel(path, demo_root, tmp_path):
    opt = shrink_option(load_option(path), demo_root, str(tmp_path), 'run')
    result = run_train(opt, str(tmp_path))
    assert 'iter:       2' in result.stderr + result.stdout
    checkpoint = tmp_path / 'experiments' / 'run' / 'models' / 'net_g_latest.pth'
    plain = {'name': 'plain', 'model_type': 'SRModel', 'scale': opt['scale'], 'num_gpu': 0,
             'network_g': opt['network_g'], 'path': {'pretrain_network_g': str(checkpoint), 'strict_load_g': True}}
    model = build_model_from(plain, str(tmp_path / 'plain'), is_train=False)
    with torch.no_grad():
        out = model.net_g(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 16 * opt['scale'], 16 * opt['scale'])
