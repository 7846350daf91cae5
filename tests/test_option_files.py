"""Every option file parses and every ``type`` resolves in BasicSR's registries; every training option file (all
but ``options/test/``) shares its structure (model, network and loss types, training keys, taps: ``structure``)
with one that trains 2 shrunk iterations and writes a student that a plain SRModel loads strictly (files that differ
only in scale or numbers add no code path).

The first file of each kind of run (model type, SR or restoration data) trains through train.py in a subprocess,
with BasicSR's data loader and validation; the others train in this process, on a random batch of the shrunk
patch size.
"""
import glob
import json
import os

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from conftest import (OPTIONS, build_model_from, differing_tensors, load_option, random_batch, run_train, shrink_option,
                      training_steps)
from datasets_prep.make_test_options import student_network

ALL_OPTIONS = sorted(glob.glob(os.path.join(OPTIONS, '**', '*.yml'), recursive=True))
EVALUATION_OPTIONS = [p for p in ALL_OPTIONS if os.path.relpath(p, OPTIONS).startswith('test' + os.sep)]
TRAINING_OPTIONS = [p for p in ALL_OPTIONS if p not in EVALUATION_OPTIONS]


def run_kind(path):
    opt = load_option(path)
    return opt['model_type'], opt['scale'] == 1


def structure(path):
    """What decides the code a run goes through: its kind, the types of its networks and losses, its training keys
    and taps. Files that differ only in scale or in numbers (widths, weights, schedules) share a structure."""
    opt = load_option(path)
    train = opt.get('train') or {}
    return json.dumps({
        'kind': run_kind(path),
        'networks': {key: value.get('type') for key, value in opt.items() if key.startswith('network_')},
        'train': {key: value.get('type') if isinstance(value, dict) and 'type' in value else None
                  for key, value in train.items()},
        'taps': {key: len(paths) for key, paths in (train.get('feature_taps') or {}).items()},
    }, sort_keys=True)


THROUGH_TRAIN_PY = {kind: path for path, kind in reversed([(p, run_kind(p)) for p in TRAINING_OPTIONS])}
STRUCTURES = {}  # structure -> the first file of that structure: the one that trains
for training_path in TRAINING_OPTIONS:
    STRUCTURES.setdefault(structure(training_path), training_path)
TRAINED_OPTIONS = sorted(STRUCTURES.values())


def option_id(path):
    return os.path.relpath(path, OPTIONS)


def types_in(node, where=''):
    """(where, key, name) of every ``type`` / ``model_type`` in a nested option dict, as check_options.py walks."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ('type', 'model_type') and isinstance(value, str):
                yield where, key, value
            else:
                yield from types_in(value, f'{where}.{key}' if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from types_in(value, f'{where}[{i}]')


def registry_for(where, key):
    """The registry BasicSR resolves a ``type`` from, by where it sits; None for types no registry holds."""
    if where.endswith('io_backend') or where.startswith(('train.optim', 'train.scheduler')):
        return None  # the file backend, optimisers and schedulers are chosen by name in BasicSR's code
    if key == 'model_type':
        return MODEL_REGISTRY
    if where.startswith('network_'):
        return ARCH_REGISTRY
    if where.startswith('datasets.'):
        return DATASET_REGISTRY
    if where.startswith('val.metrics.'):
        return METRIC_REGISTRY
    if where.startswith('train.'):  # a loss is a train.*_opt dict; other dicts name their own kinds (DCKD's negatives)
        return LOSS_REGISTRY if where.split('.')[1].endswith('_opt') else None
    raise AssertionError(f'{where}.{key}: no BasicSR registry resolves a type here')


def test_the_method_files_exist():
    names = {option_id(p) for p in TRAINING_OPTIONS}
    logits = {f'logits_{arch}_x{scale}.yml' for arch in ('edsr', 'rcan', 'swinir') for scale in (2, 3, 4)}
    features = {f'{method}_{arch}_x{scale}.yml' for method in ('fitnet', 'at', 'fakd') for arch in ('edsr', 'rcan')
                for scale in (2, 4)}
    restoration = {'logits_nafnet_deblur.yml', 'logits_restormer_derain.yml', 'logits_uformer_denoise.yml'}
    assert logits | features | restoration <= names


def test_no_file_a_user_gets_cites_the_team_notes():
    """Users have the repository only: option files, README and code explain their choices themselves instead of
    citing the team's notes (METHODS.md, DESIGN.md) or the folder beside the checkout that holds them."""
    root = os.path.dirname(OPTIONS)
    files = ALL_OPTIONS + [os.path.join(root, 'README.md')]
    for folder in ('kd_archs', 'kd_losses', 'kd_models', 'basicsr_kd', 'datasets_prep', 'benchmarks', 'tests'):
        files += glob.glob(os.path.join(root, folder, '*.py')) + glob.glob(os.path.join(root, folder, '*.yml'))
    citing = {os.path.relpath(path, root) for path in files
              for cited in ('METHODS.md', 'DESIGN.md', 'METHOD_DONE.md', '../shared')
              if cited in open(path, encoding='utf-8').read() and not path.endswith('test_option_files.py')}
    assert not citing


@pytest.mark.parametrize('path', ALL_OPTIONS, ids=option_id)
def test_parses_and_every_type_resolves(path):
    opt = load_option(path)
    if path in TRAINING_OPTIONS:  # the experiment folder is named after it: two files must not share one
        assert opt['name'] == os.path.splitext(os.path.basename(path))[0], 'name must match the file name'
    found = list(types_in(opt))
    assert any(key == 'model_type' for _, key, _ in found)
    for where, key, name in found:
        registry = registry_for(where, key)
        if registry is not None:
            registry.get(name)  # BasicSR's own lookup (with its `_basicsr` suffix); KeyError names what is missing


def test_every_training_file_shares_its_structure_with_one_that_trains():
    assert {structure(path) for path in TRAINING_OPTIONS} == {structure(path) for path in TRAINED_OPTIONS}
    assert set(THROUGH_TRAIN_PY.values()) <= set(TRAINED_OPTIONS)


@pytest.mark.parametrize('path', TRAINED_OPTIONS, ids=option_id)
def test_two_iterations_train_and_the_student_loads_as_srmodel(path, request, tmp_path):
    opt = load_option(path)  # scale 1 (deblurring, deraining, denoising) trains on same-size pairs
    data_root = request.getfixturevalue('restoration_root' if opt['scale'] == 1 else 'demo_root')
    opt = shrink_option(opt, data_root, str(tmp_path), 'run')
    models = tmp_path / 'experiments' / 'run' / 'models'
    if THROUGH_TRAIN_PY[run_kind(path)] == path:
        if 'val' in opt:  # validate once, at the end of training (BasicSR always does), not also at iteration 2
            opt['val']['val_freq'] = 10**9
        result = run_train(opt, str(tmp_path))
        assert sorted(training_steps(result)) == [1, 2]
        if 'val' in opt:
            assert f'Validation {opt["datasets"]["val"]["name"]}' in result.stdout + result.stderr
    else:
        model = build_model_from(opt, str(tmp_path / 'experiments' / 'run'))
        patch = opt['datasets']['train']['gt_size'] // opt['scale']
        model.feed_data(random_batch(scale=opt['scale'], batch=opt['datasets']['train']['batch_size_per_gpu'],
                                     size=patch))
        for step in (1, 2):
            model.update_learning_rate(step)
            model.optimize_parameters(step)
            assert all(torch.isfinite(torch.as_tensor(value)) for value in model.log_dict.values()), model.log_dict
        model.save(-1, -1)
    checkpoint = torch.load(models / 'net_g_latest.pth', weights_only=True)
    # MTKD's stage 1 trains its aggregator as network_g: fed the teachers' outputs (HR size), saved with their list
    # and its own network options; an SKD student records its pixel range (KDEvalModel checks val.pixel_range); CSD's
    # params are the student slice of its super-network, saved beside it; PISR's stage 1 trains its teacher, fed GT
    aggregator = opt['model_type'] == 'KDMTKDAggregationModel'
    gt_fed = opt['model_type'] == 'KDPISRTeacherModel'
    extras = {'KDMTKDAggregationModel': {'teachers', 'network'}, 'KDSKDModel': {'pixel_range'},
              'KDCSDModel': {'supernet_params', 'supernet_params_ema'}}
    assert set(checkpoint) <= {'params', 'params_ema', *extras.get(opt['model_type'], ())}
    frozen = opt['path'].get('ignore_resume_networks') or []
    for key in (k for k in opt if k.startswith('network_') and k != 'network_g'):
        saved = (models / f'net_{key[len("network_"):]}_latest.pth').is_file()
        assert saved != (key in frozen), f'{key}: helpers are saved with the student, frozen networks never'

    scale = opt['scale']
    plain = {'name': 'plain', 'model_type': 'SRModel', 'scale': scale, 'num_gpu': 0,
             'network_g': student_network(opt['network_g']),  # the network of its options/test/ file
             'path': {'pretrain_network_g': str(models / 'net_g_latest.pth'), 'strict_load_g': True}}
    model = build_model_from(plain, str(tmp_path / 'plain'), is_train=False)
    assert not differing_tensors(model.net_g.state_dict(), checkpoint['params'])
    channels, size = (3 * len(checkpoint['teachers']), 16 * scale) if aggregator else (3, 16)
    size = 16 * scale if gt_fed else size
    model.feed_data({'lq': torch.rand(1, channels, size, size)})  # 16: a multiple of every shrunk window size
    model.test()
    assert model.output.shape == (1, 3, 16 * scale, 16 * scale)
    assert torch.isfinite(model.output).all()
