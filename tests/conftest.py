"""Shared fixtures: a tiny demo data set, option files shrunk to CPU size, and ``train.py`` run as a subprocess."""
import copy
import json
import os
import re
import subprocess
import sys
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
import yaml

from basicsr_kd.compat import patch_basicsr
from basicsr_kd.parsed_options import parsed_options
from basicsr_kd.registration import register_plugin
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from datasets_prep.make_demo_sr import build_demo_set
from kd_models.kd_base_model import KDBaseModel

register_plugin()
patch_basicsr()  # in-process models run as under train.py (DDP on CPU, resume on CPU)
if os.environ.get('PYTEST_XDIST_WORKER'):  # `pytest -n 2` (make test): one torch thread per worker on 2 cores
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = os.path.join(ROOT, 'options')
RECORDING_TRAIN = os.path.join(ROOT, 'tests', 'recording_train.py')
ARCH_SPECS = os.path.join(ROOT, 'tests', 'arch_specs')  # made from the official classes
WIDTH = 16
# Also NAFNet's width, Restormer's and DRSformer's dim (their heads [1, 2, 4, 8] divide every level's dim * 2**level)
# and Uformer's embed_dim; Uformer's decoder levels train at img_size / 8 with modulators, which need windows no
# larger than that: win_size 2
SHRUNK_VALUES = {'num_feat': WIDTH, 'embed_dim': 12, 'img_size': 16, 'width': 8, 'dim': 8, 'win_size': 2}
SHRUNK_LIST_ITEMS = {'depths': 1, 'num_heads': 2, 'in_channels': WIDTH, 'out_channels': WIDTH}


def load_option(path):
    with open(path) as f:
        return yaml.safe_load(f)


def shrink_network(net_opt):
    """The same architecture with CPU-test widths: block counts stay, so feature-tap paths stay valid."""
    net_opt = copy.deepcopy(net_opt)
    for key, value in SHRUNK_VALUES.items():
        if key in net_opt:
            net_opt[key] = value
    for key, value in SHRUNK_LIST_ITEMS.items():
        if isinstance(net_opt.get(key), list):  # not the image channels of Restormer (out_channels: 3)
            net_opt[key] = [value] * len(net_opt[key])
    if net_opt.get('type') == 'KDSlimmableRCAN':  # CSD's slice squeezes w * num_feat // squeeze_factor channels: 1
        net_opt['squeeze_factor'] = 4
    for key in ('encoder', 'decoder'):  # networks built from nested network dicts (PISR's teacher)
        if isinstance(net_opt.get(key), dict):
            net_opt[key] = shrink_network(net_opt[key])
    if net_opt.get('type') == 'KDVQGANEncoder':  # DCKD's encoder: the same levels and taps, 32 channels at the first
        net_opt['ddconfig'] = {**(net_opt.get('ddconfig') or {}), 'ch': 32}
    return net_opt


def shrink_paired_channels(opt, original):
    """Rescale the ``student_channels`` / ``teacher_channels`` lists of helper networks (e.g. SLKD's scale conversion
    modules) by the factor the width of ``network_g`` / of the first teacher shrank by, so they keep fitting the
    shrunk networks' taps (every level's channels are a multiple of the network's width)."""
    teacher = next((key for key in ('network_t', 'network_t1') if key in opt), None)
    for key in [k for k in opt if k.startswith('network_')]:
        for channels, source in (('student_channels', 'network_g'), ('teacher_channels', teacher)):
            if not isinstance(opt[key].get(channels), list) or source is None:
                continue
            width = next((k for k in SHRUNK_VALUES if k in original[source] and k not in ('img_size', 'win_size')),
                         None)
            if width is not None:
                ratio = Fraction(opt[source][width], original[source][width])
                opt[key][channels] = [int(c * ratio) for c in opt[key][channels]]


def save_random_weights(net_opt, path, seed=0):
    """Random weights for a frozen network, saved in BasicSR's layout (tests never need pretrained files)."""
    torch.manual_seed(seed)
    torch.save({'params': build_network(net_opt).state_dict()}, path)
    return path


def shrink_option(opt, data_root, workdir, name, total_iter=2):
    """A copy of a training option dict that trains in seconds, with random teachers, on ``data_root``: the demo SR
    set (``demo_root``), or for ``scale: 1`` the restoration pair set (``restoration_root``)."""
    opt = copy.deepcopy(opt)
    scale = opt['scale']
    opt.update(name=name, num_gpu=0)
    gt, lq = ('target', 'input') if scale == 1 else ('HR', os.path.join('LR_bicubic', f'X{scale}'))
    for phase, dataset in opt['datasets'].items():
        split = 'train' if phase == 'train' else 'val'
        dataset.update(dataroot_gt=os.path.join(data_root, split, gt), dataroot_lq=os.path.join(data_root, split, lq))
        dataset.pop('meta_info_file', None)
        if phase == 'train':
            dataset.update(gt_size=16 * scale, batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=10)
    original = {key: opt[key] for key in opt if key.startswith('network_')}
    for key in [k for k in opt if k.startswith('network_')]:
        opt[key] = shrink_network(opt[key])
    shrink_paired_channels(opt, original)
    model_class = MODEL_REGISTRY.get(opt['model_type'])
    if issubclass(model_class, KDBaseModel):  # SRModel (the teacher-training files) has no frozen networks
        model_class.write_random_frozen_files(opt, workdir)
    opt['train'].update(total_iter=total_iter, warmup_iter=-1)
    if opt['train'].get('progressive_patches'):  # the schedule's structure at shrunk sizes: the usual patch, then
        # twice its side (the VQGAN's f16 encoder needs 16 at least), loaded at the largest
        opt['datasets']['train']['gt_size'] = 32 * scale
        opt['train']['progressive_patches'] = [[1, 16 * scale, 1], [max(total_iter, 2), 32 * scale, 2]]
    if opt['train'].get('num_negatives'):  # CSD's negatives: LR images of the shrunk batch
        opt['train']['num_negatives'] = 2
    if opt['train'].get('history'):  # DCKD's history model: updated at every iteration of the short run
        opt['train']['history']['update_schedule'] = [[total_iter, 1]]
    if opt['train'].get('dfkd'):  # DFKD's generator: a step after every student step of the short run
        opt['train']['dfkd']['student_steps'] = 1
    if 'val' in opt:
        opt['val'].update(val_freq=total_iter, save_img=False)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=total_iter, use_tb_logger=False)
    return opt


def run_train(opt, cwd, *args, launcher=None, check=True, script=os.path.join(ROOT, 'train.py')):
    """Write ``opt`` to ``cwd`` and run ``script`` (train.py) on it, optionally under torchrun; return the process."""
    opt_path = os.path.join(cwd, f'{opt["name"]}.yml')
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f)
    if launcher == 'torchrun':
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', script,
                   '-opt', opt_path, '--launcher', 'pytorch', *args]
    else:
        command = [sys.executable, script, '-opt', opt_path, *args]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f'train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n'
                             f'{result.stderr[-6000:]}')
    return result


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    """The demo SR set, cut to 2 training and 1 validation image."""
    root = str(tmp_path_factory.mktemp('demo_sr'))
    build_demo_set(root, scales=(2, 3, 4), num_train=2, num_val=1)
    return root


@pytest.fixture(scope='session')
def restoration_root(demo_root, tmp_path_factory):
    """A scale-1 pair set in the layout of the restoration data, ``{train,val}/{target,input}``: the top-left 60 x 76
    crop of each demo HR image (sides that are not multiples of 8 or 16, so the networks pad) as target, the same
    crop with seeded Gaussian noise (sigma 15 grey levels) as input."""
    root = str(tmp_path_factory.mktemp('restoration'))
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for sub in ('target', 'input'):
            os.makedirs(os.path.join(root, split, sub))
        for name in sorted(os.listdir(os.path.join(demo_root, split, 'HR'))):
            target = cv2.imread(os.path.join(demo_root, split, 'HR', name))[:60, :76]
            noisy = np.clip(target + rng.normal(0, 15, target.shape), 0, 255).round().astype(np.uint8)
            cv2.imwrite(os.path.join(root, split, 'target', name), target)
            cv2.imwrite(os.path.join(root, split, 'input', name), noisy)
    return root


@pytest.fixture
def basicsr_log(caplog):
    """``caplog`` listening on BasicSR's logger, which does not propagate to the root logger caplog listens to."""
    logger = get_root_logger()
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def build_model_from(opt, experiments_root, is_train=True):
    """A BasicSR model built in-process, as ``train.py`` builds it."""
    from basicsr.models import build_model
    return build_model(parsed_options(opt, experiments_root, is_train))


def tiny_logits_opt(demo_root, workdir):
    """options/logits_edsr_x2.yml with 16 channels, 2 student and 3 teacher blocks, a random teacher in ``workdir``."""
    opt = load_option(os.path.join(OPTIONS, 'logits_edsr_x2.yml'))
    opt['network_g']['num_block'], opt['network_t']['num_block'] = 2, 3
    return shrink_option(opt, demo_root, str(workdir), 'logits')


@pytest.fixture
def logits_opt(demo_root, tmp_path):
    """``tiny_logits_opt`` in the test's tmp_path."""
    return tiny_logits_opt(demo_root, tmp_path)


TRAINING_STEP = re.compile(r'\[epoch:\s*\d+, iter:\s*([\d,]+), lr:\(([^)]*)\)\]')


def interrupted_and_resumed(opt, cwd, stop=2, total=3, script=RECORDING_TRAIN):
    """Train ``opt`` (a ``KDRecording*`` model type) for ``stop`` iterations, saving there, then go on to ``total``
    with ``--auto_resume``. Returns (the ``.state`` saved at ``stop``, what the resumed run held right after
    ``resume_training``, the networks recorded at ``stop``, the resumed run)."""
    opt = copy.deepcopy(opt)
    opt['train']['total_iter'], opt['logger']['save_checkpoint_freq'] = stop, stop
    assert sorted(training_steps(run_train(opt, cwd, script=script))) == list(range(1, stop + 1))
    opt['train']['total_iter'] = total
    result = run_train(opt, cwd, '--auto_resume', script=script)
    assert f'Resuming training from epoch: 0, iter: {stop}.' in result.stdout + result.stderr
    assert sorted(training_steps(result)) == list(range(stop + 1, total + 1))
    root = os.path.join(cwd, 'experiments', opt['name'])
    return (torch.load(os.path.join(root, 'training_states', f'{stop}.state'), weights_only=False),
            torch.load(os.path.join(root, 'resumed_rank0.pth'), weights_only=False),
            torch.load(os.path.join(root, f'iter{stop}_rank0.pth'), weights_only=True), result)


def two_rank_run(opt, cwd, script=RECORDING_TRAIN):
    """Train ``opt`` (a ``KDRecording*`` model type) on two CPU ranks under torchrun; check that both ranks ran every
    iteration, on batches of their own. Returns (each rank's networks at the start, each rank's networks and
    ``seen_lq`` at the end, the run)."""
    result = run_train(opt, cwd, launcher='torchrun', script=script)  # raises unless both ranks exit 0
    assert 'World size (gpu number): 2' in result.stdout + result.stderr
    assert sorted(training_steps(result)) == list(range(1, opt['train']['total_iter'] + 1))
    root = os.path.join(cwd, 'experiments', opt['name'])
    init, final = ([torch.load(os.path.join(root, f'{name}_rank{r}.pth'), weights_only=True) for r in range(2)]
                   for name in ('init', 'iter-1'))
    assert final[0]['seen_lq'] != final[1]['seen_lq'], 'the ranks must train on different batches'
    return init, final, result


def assert_regressor_method_resumes(opt, cwd):
    """A method with a trainable regressor (``opt``: a ``KDRecording*`` model type), stopped after 2 iterations and
    resumed: the student and ``network_reg`` continue from their iteration-2 weights, the optimiser (the student's
    group and the regressor's) and scheduler from their saved states, and the regressor trains on."""
    saved, resumed, at_iter_2, _ = interrupted_and_resumed(opt, cwd)
    assert_networks_resumed(resumed, at_iter_2, ('g', 'reg'))
    assert len(saved['optimizers'][0]['param_groups']) == 2  # the student's group and the regressor's
    assert_optimisers_resumed(saved, resumed)
    reg_at_3 = torch.load(os.path.join(cwd, 'experiments', opt['name'], 'models', 'net_reg_latest.pth'),
                          weights_only=True)
    assert differing_tensors(reg_at_3['params'], at_iter_2['reg'])  # and it trains on after the resume


def assert_networks_resumed(resumed, at_iter_2, names):
    """Each network ``names`` of a resumed run (``interrupted_and_resumed``) holds its iteration-2 weights."""
    for name in names:
        assert not differing_tensors(resumed['networks'][name], at_iter_2[name]), f'net_{name} did not resume'


def assert_optimisers_resumed(saved, resumed):
    """The optimisers' groups and moments and the schedulers a resumed run holds equal those saved."""
    assert len(saved['optimizers']) == len(resumed['optimizers']) and saved['schedulers'] == resumed['schedulers']
    for stored, loaded in zip(saved['optimizers'], resumed['optimizers']):
        assert loaded['param_groups'] == stored['param_groups']
        assert loaded['state'].keys() == stored['state'].keys() and len(stored['state']) > 0
        for index, moments in stored['state'].items():
            assert not differing_tensors(loaded['state'][index], moments)


def training_steps(result):
    """{iteration: [learning rates]} of the training-step lines BasicSR logged in a ``run_train`` result."""
    steps = TRAINING_STEP.findall(result.stdout + result.stderr)
    return {int(step.replace(',', '')): [float(lr) for lr in lrs.split(',') if lr] for step, lrs in steps}


def snapshot(net):
    """A detached copy of ``net``'s state dict, to compare before and after training steps."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def same_tensors(a, b):
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fixed(*shape, seed=0, dtype=torch.float64):
    """Seeded standard-normal inputs for the loss tests (float64 by default, for the loop references)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def loss(name, **kwargs):
    """A loss built through BasicSR's registry, as an option file builds it."""
    return LOSS_REGISTRY.get(name)(**kwargs)


def mae_by_loop(x, y):
    """Mean absolute difference of two tensors, element by element (a loop reference for the loss tests)."""
    xs, ys = x.flatten().tolist(), y.flatten().tolist()
    return sum(abs(a - b) for a, b in zip(xs, ys)) / len(xs)


def random_batch(seed=0, scale=2, batch=2, size=16):
    """A fixed random LQ/GT training batch for in-process model tests."""
    g = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(batch, 3, size, size, generator=g),
            'gt': torch.rand(batch, 3, size * scale, size * scale, generator=g)}


def differing_tensors(a, b):
    """Keys of two state dicts whose tensors are not exactly equal (or that only one of them has)."""
    return sorted(set(a) ^ set(b)) + [k for k in a if k in b and not torch.equal(a[k], b[k])]


def check_official_spec(name):
    """Build the spec ``tests/arch_specs/<name>.json`` (made from the official class) with our registered class
    and check it: same state_dict keys in the same order, same shapes and buffers, same parameter count, and a strict
    load of random tensors of those shapes."""
    with open(os.path.join(ARCH_SPECS, f'{name}.json')) as f:
        spec = json.load(f)
    net = build_network({'type': spec['source'].rsplit(':', 1)[-1], **spec['kwargs']})  # full size, no forward
    assert type(net).__module__.startswith('kd_archs.')
    state = net.state_dict()
    assert {key: list(value.shape) for key, value in state.items()} == spec['state_dict']
    assert list(state) == list(spec['state_dict']), 'same keys, but not in the official order'
    assert [key for key, _ in net.named_buffers()] == spec['buffer_keys']
    assert sum(param.numel() for param in net.parameters()) == spec['num_params']

    generator = torch.Generator().manual_seed(0)
    checkpoint = {key: torch.randn(shape, generator=generator) for key, shape in spec['state_dict'].items()}
    for key in spec['buffer_keys']:  # e.g. Uformer's relative position indices, which are integers
        checkpoint[key] = torch.randint(0, 100, spec['state_dict'][key], generator=generator)
    net.load_state_dict(checkpoint, strict=True)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in checkpoint.items())
