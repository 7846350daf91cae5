"""One test per BasicSR 1.4.2 fix (basicsr_kd/__init__.py and basicsr_kd/compat.py), on the real library."""
import multiprocessing
import os
import socket
import subprocess
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.serialization
import torchvision.transforms.functional as tv_functional
from basicsr.models.base_model import BaseModel
from basicsr.models.lr_scheduler import MultiStepRestartLR
from torch.nn.parallel import DistributedDataParallel

import basicsr_kd
from basicsr_kd import compat as basicsr_compat


# ------------------------------------------------------------------------ fix 1: functional_tensor stand-in
def test_basicsr_imports_and_degradations_has_a_working_rgb_to_grayscale():
    import basicsr
    from basicsr.data import degradations
    assert basicsr.__version__ == '1.4.2'
    img = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    gray = degradations.rgb_to_grayscale(img, num_output_channels=3)
    assert gray.shape == (2, 3, 5, 4)
    assert torch.equal(gray, tv_functional.rgb_to_grayscale(img, num_output_channels=3))
    expected = 0.2989 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]  # ITU-R 601-2 luma, torchvision's weights
    assert torch.allclose(degradations.rgb_to_grayscale(img)[:, 0], expected, atol=1e-6)


def test_stand_in_is_installed_when_the_module_is_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, basicsr_kd.FUNCTIONAL_TENSOR)
    basicsr_kd.install_functional_tensor_stand_in()
    stand_in = sys.modules[basicsr_kd.FUNCTIONAL_TENSOR]
    assert stand_in.rgb_to_grayscale is tv_functional.rgb_to_grayscale


def test_stand_in_is_not_installed_over_a_real_module(monkeypatch):
    real = types.ModuleType(basicsr_kd.FUNCTIONAL_TENSOR)
    monkeypatch.setitem(sys.modules, basicsr_kd.FUNCTIONAL_TENSOR, real)
    basicsr_kd.install_functional_tensor_stand_in()
    assert sys.modules[basicsr_kd.FUNCTIONAL_TENSOR] is real and not hasattr(real, 'rgb_to_grayscale')


# ------------------------------------------------------------------------ fix 2: --launcher pytorch on CPU
def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_rank(rank, port, results):
    """One rank as torchrun starts it: environment variables, then BasicSR's ``init_dist('pytorch')``."""
    os.environ.update(
        MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE='2', RANK=str(rank), LOCAL_RANK=str(rank))
    from basicsr.utils.dist_util import get_dist_info, init_dist
    init_dist('pytorch')
    value = torch.tensor([rank + 1.])
    dist.all_reduce(value)
    results.put((rank, dist.get_backend(), value.item(), get_dist_info()))
    dist.destroy_process_group()


def test_launcher_pytorch_without_cuda_runs_a_gloo_group():
    assert not torch.cuda.is_available()
    context = multiprocessing.get_context('fork')  # forked ranks inherit the patched BasicSR: no 10 s re-import
    results = context.SimpleQueue()
    port = free_port()
    ranks = [context.Process(target=run_rank, args=(rank, port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(60)
        if process.exitcode is None:
            process.kill()
    assert [process.exitcode for process in ranks] == [0, 0]
    # both ranks agree on the sum 1 + 2, so the group really spans two processes
    assert sorted(results.get() for _ in ranks) == [(0, 'gloo', 3.0, (0, 2)), (1, 'gloo', 3.0, (1, 2))]


def test_launcher_pytorch_with_cuda_sets_the_local_rank_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: calls.append(('set_device', device)))
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append(('init', backend)))
    monkeypatch.setenv('RANK', '6')
    monkeypatch.setenv('LOCAL_RANK', '1')
    basicsr_compat.init_dist_pytorch('nccl')
    monkeypatch.delenv('LOCAL_RANK')  # BasicSR's own rule then: RANK % number of GPUs
    basicsr_compat.init_dist_pytorch('nccl')
    assert calls == [('set_device', 1), ('init', 'nccl'), ('set_device', 2), ('init', 'nccl')]


# ------------------------------------------------------------------------ fix 3: DDP without device ids
class PlainModel(BaseModel):

    def __init__(self, dist_on):
        super().__init__({'num_gpu': 0, 'is_train': True, 'dist': dist_on})


def test_model_to_device_wraps_in_ddp_without_device_ids_on_cpu(tmp_path):
    net = torch.nn.Conv2d(3, 3, 1)
    assert PlainModel(False).model_to_device(net) is net
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0, world_size=1)
    try:
        wrapped = PlainModel(True).model_to_device(net)
    finally:
        dist.destroy_process_group()
    assert isinstance(wrapped, DistributedDataParallel) and wrapped.module is net
    assert wrapped.device_ids is None and wrapped.device_type == 'cpu'


def resume_opt(tmp_path, **path):
    """The options ``load_resume_state`` reads for an ``--auto_resume`` run with a teacher, its states in
    ``tmp_path/training_states``; ``path`` adds keys to ``path``."""
    return {'auto_resume': True, 'network_g': {}, 'network_t': {},
            'path': {'training_states': str(tmp_path / 'training_states'), 'models': str(tmp_path / 'models'),
                     'resume_state': None, 'ignore_resume_networks': ['network_t'], **path}}


# ------------------------------------------------------------------------ fix 4: resume on CPU
def training_state(iteration):
    """A training state as BasicSR's ``save_training_state`` writes it: optimiser and (Counter-holding) scheduler."""
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = MultiStepRestartLR(optimizer, milestones=[5, 20])
    return {
        'epoch': 0,
        'iter': iteration,
        'optimizers': [optimizer.state_dict()],
        'schedulers': [scheduler.state_dict()]
    }


def test_resume_state_is_the_newest_and_loaded_to_cpu(tmp_path, monkeypatch):
    states = tmp_path / 'training_states'
    states.mkdir()
    with monkeypatch.context() as m:  # write the states as a CUDA machine does: storages tagged cuda:0
        m.setattr(torch.serialization, 'location_tag', lambda storage: 'cuda:0')
        for iteration in (2, 10):
            torch.save(training_state(iteration), states / f'{iteration}.state')
    with pytest.raises(RuntimeError, match='CUDA'):  # what a load without the fix meets on this machine
        torch.load(states / '10.state')
    opt = resume_opt(tmp_path)
    state = basicsr_compat.load_resume_state(opt)
    assert state['iter'] == 10
    adam = state['optimizers'][0]['state'][0]
    assert adam['exp_avg'].device.type == 'cpu' and adam['exp_avg'].shape == (2, 2)
    assert state['schedulers'][0]['milestones'] == {5: 1, 20: 1}
    assert opt['path']['resume_state'] == str(states / '10.state')
    assert opt['path']['pretrain_network_g'] == str(tmp_path / 'models' / 'net_g_10.pth')  # BasicSR's check_resume
    assert 'pretrain_network_t' not in opt['path']


def test_auto_resume_skips_a_truncated_newest_state_with_a_warning(tmp_path, basicsr_log):
    states = tmp_path / 'training_states'
    states.mkdir()
    for iteration in (2, 4, 6):
        torch.save(training_state(iteration), states / f'{iteration}.state')
    for iteration in (4, 6):  # the run was killed while writing 6.state; 4.state was damaged too
        data = (states / f'{iteration}.state').read_bytes()
        (states / f'{iteration}.state').write_bytes(data[:len(data) // 2])
    opt = {'auto_resume': True, 'network_g': {}, 'path': {'training_states': str(states), 'models': str(tmp_path),
                                                          'resume_state': None}}
    state = basicsr_compat.load_resume_state(opt)
    assert state['iter'] == 2 and opt['path']['resume_state'] == str(states / '2.state')
    skipped = [record.getMessage() for record in basicsr_log.records if 'does not load' in record.getMessage()]
    assert len(skipped) == 2 and '6.state' in skipped[0] and '4.state' in skipped[1]


# ------------------------------------------------------------------------ fix 8: frozen param keys on resume
def test_resume_keeps_the_param_key_of_frozen_networks(tmp_path):
    states = tmp_path / 'training_states'
    states.mkdir()
    torch.save(training_state(4), states / '4.state')
    opt = resume_opt(tmp_path, param_key_g='params_ema', param_key_t='params_ema')
    basicsr_compat.load_resume_state(opt)
    assert opt['path']['param_key_g'] == 'params'  # BasicSR's rule for the student: it resumes its raw weights
    assert opt['path']['param_key_t'] == 'params_ema'  # the teacher keeps the weights it started with


def test_importing_the_plugin_does_not_patch_basicsr():
    code = ('import sys, kd_archs, kd_losses, kd_models, basicsr.train; from basicsr.models.base_model import '
            'BaseModel; print("basicsr_kd.compat" in sys.modules, BaseModel.model_to_device.__module__)')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=root))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['False', 'basicsr.models.base_model']


def test_no_resume_state_without_auto_resume_or_path(tmp_path):
    opt = {'auto_resume': False, 'path': {'training_states': str(tmp_path), 'resume_state': None}}
    assert basicsr_compat.load_resume_state(opt) is None


def test_resume_keeps_the_cuda_mapping_on_a_cuda_machine(monkeypatch):
    assert basicsr_compat.resume_map_location() == 'cpu'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 3)
    to_cuda = basicsr_compat.resume_map_location()
    storage = types.SimpleNamespace(cuda=lambda device: ('cuda', device))
    assert to_cuda(storage, 'cpu') == ('cuda', 3)


# ------------------------------------------------------------------------ fix 5: --local-rank
def test_torch_local_rank_spelling_is_accepted():
    argv = ['train.py', '--local-rank=1', '-opt', 'a-b.yml', '--local-rank', '1', '--launcher', 'pytorch', '--debug']
    assert basicsr_compat.accept_torch_local_rank_spelling(argv) == [
        'train.py', '--local_rank=1', '-opt', 'a-b.yml', '--local_rank', '1', '--launcher', 'pytorch', '--debug'
    ]
    untouched = ['train.py', '--local_rank', '0', '--auto_resume']
    assert basicsr_compat.accept_torch_local_rank_spelling(untouched) == untouched


def test_basicsr_uses_the_fixes():
    import basicsr.train
    from basicsr.utils import dist_util
    assert dist_util._init_dist_pytorch is basicsr_compat.init_dist_pytorch
    assert BaseModel.model_to_device is basicsr_compat.model_to_device
    assert basicsr.train.load_resume_state is basicsr_compat.load_resume_state
    assert basicsr.train.parse_options.kd_forced_seed


@pytest.mark.parametrize('forced', [[], ['manual_seed=7'], ['manual_seed = 7', 'train:ema_decay=0.9']])
def test_force_yml_manual_seed_seeds_the_run(forced, monkeypatch):
    import basicsr.train
    option = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'options', 'demo', 'demo_teacher_x2.yml')
    forced_args = ['--force_yml', *forced] if forced else []
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', option, *forced_args])
    opt, _ = basicsr.train.parse_options(os.getcwd(), is_train=True)
    drawn = torch.rand(4)
    expected_seed = 7 if forced else opt['manual_seed']
    assert opt['manual_seed'] == expected_seed
    torch.manual_seed(expected_seed)  # rank 0: BasicSR seeds manual_seed + rank
    assert torch.equal(drawn, torch.rand(4))
