"""One test per BasicSR 1.4.2 fix in kd_models/basicsr_compat.py, on the real library."""
import os
import socket
import subprocess
import sys
import types

import torch
import torch.distributed as dist
import torchvision.transforms.functional as tv_functional
from basicsr.models.base_model import BaseModel
from torch.nn.parallel import DistributedDataParallel

from kd_models import basicsr_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_functional_tensor_stand_in_serves_basicsr_degradations():
    from basicsr.data import degradations
    img = torch.rand(1, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(degradations.rgb_to_grayscale(img), tv_functional.rgb_to_grayscale(img))


def test_functional_tensor_stand_in_leaves_a_real_module_alone(monkeypatch):
    real = types.ModuleType(basicsr_compat.FUNCTIONAL_TENSOR)
    monkeypatch.setitem(sys.modules, basicsr_compat.FUNCTIONAL_TENSOR, real)
    basicsr_compat.install_functional_tensor_stand_in()
    assert sys.modules[basicsr_compat.FUNCTIONAL_TENSOR] is real


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
import kd_models  # noqa: F401
from basicsr.utils.dist_util import init_dist
init_dist('pytorch')
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(dist.get_backend(), value.item())
dist.destroy_process_group()
"""


def test_launcher_pytorch_without_cuda_uses_gloo():
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), WORLD_SIZE='2', PYTHONPATH=ROOT,
               OMP_NUM_THREADS='1')
    procs = [
        subprocess.Popen([sys.executable, '-c', RANK_SCRIPT], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert out.split() == ['gloo', '3.0']  # ranks 1 + 2, reduced across both processes


def test_launcher_pytorch_with_cuda_sets_local_rank_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: calls.append(('set_device', device)))
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls.append(('init', backend)))
    monkeypatch.setenv('RANK', '6')
    monkeypatch.setenv('LOCAL_RANK', '1')
    basicsr_compat.init_dist_pytorch('nccl')
    monkeypatch.delenv('LOCAL_RANK')
    basicsr_compat.init_dist_pytorch('nccl')
    assert calls == [('set_device', 1), ('init', 'nccl'), ('set_device', 2), ('init', 'nccl')]


class _Model(BaseModel):

    def __init__(self, dist_on):
        super().__init__({'num_gpu': 0, 'is_train': True, 'dist': dist_on})


def test_model_to_device_wraps_in_ddp_on_cpu(tmp_path):
    net = torch.nn.Conv2d(3, 3, 1)
    assert _Model(False).model_to_device(net) is net
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0, world_size=1)
    try:
        wrapped = _Model(True).model_to_device(net)
        assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids is None
        assert wrapped.module is net
    finally:
        dist.destroy_process_group()


def test_resume_state_is_loaded_to_cpu_from_the_newest_file(tmp_path):
    states = tmp_path / 'training_states'
    states.mkdir()
    for iteration in (2, 10):
        torch.save({'iter': iteration, 'epoch': 0, 'weights': torch.full((2, ), float(iteration))},
                   states / f'{iteration}.state')
    opt = {
        'auto_resume': True,
        'network_g': {},
        'network_t': {},
        'path': {'training_states': str(states), 'models': str(tmp_path / 'models'), 'resume_state': None,
                 'ignore_resume_networks': ['network_t']}
    }
    state = basicsr_compat.load_resume_state(opt)
    assert state['iter'] == 10 and state['weights'].device.type == 'cpu'
    assert torch.equal(state['weights'], torch.full((2, ), 10.))
    assert opt['path']['resume_state'] == str(states / '10.state')
    assert opt['path']['pretrain_network_g'] == str(tmp_path / 'models' / 'net_g_10.pth')
    assert 'pretrain_network_t' not in opt['path']


def test_no_resume_state_without_auto_resume_or_path(tmp_path):
    opt = {'auto_resume': False, 'path': {'training_states': str(tmp_path), 'resume_state': None}}
    assert basicsr_compat.load_resume_state(opt) is None


def test_torch_local_rank_spelling_is_accepted():
    argv = ['train.py', '--local-rank=1', '-opt', 'a.yml', '--local-rank', '3', '--launcher', 'pytorch']
    assert basicsr_compat.accept_torch_local_rank_spelling(argv) == [
        'train.py', '--local_rank=1', '-opt', 'a.yml', '--local_rank', '3', '--launcher', 'pytorch'
    ]


def test_basicsr_uses_the_fixes():
    import basicsr.train
    from basicsr.utils import dist_util
    assert dist_util._init_dist_pytorch is basicsr_compat.init_dist_pytorch
    assert BaseModel.model_to_device is basicsr_compat.model_to_device
    assert basicsr.train.load_resume_state is basicsr_compat.load_resume_state
