"""Everything basicsr-kd changes in BasicSR 1.4.2 so that it runs with current torch/torchvision and on CPU.

Imported by each of our packages before the first ``import basicsr``. Each fix is a no-op where BasicSR already
works (a torchvision that still ships ``functional_tensor``, a machine with CUDA):

1. ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17) gets a stand-in module, because
   ``basicsr.data.degradations`` imports ``rgb_to_grayscale`` from it.
2. ``--launcher pytorch`` without CUDA: BasicSR hard-codes NCCL and ``torch.cuda.set_device``; we use gloo and no
   device. With CUDA the device is ``LOCAL_RANK`` (BasicSR's ``RANK % num_gpus`` when LOCAL_RANK is unset).
3. ``BaseModel.model_to_device`` passes ``torch.cuda.current_device()`` to DDP; on CPU DDP gets no device ids.
4. Resuming maps the saved state to ``torch.cuda.current_device()``; without CUDA we map it to the CPU.
5. torch's launchers spell ``--local-rank``; BasicSR's parser only knows ``--local_rank``.
6. ``parse_options`` seeds the run before it applies ``--force_yml``, so ``--force_yml manual_seed=N`` is
   recorded but not used; we seed again with the forced value (nothing random happens in between).
"""
import importlib.util
import os
import sys
import types

import torch
import torch.distributed as dist
import torchvision.transforms.functional as tv_functional

FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'


def install_functional_tensor_stand_in():
    """Fix 1: register a stand-in for the module torchvision 0.17 removed, unless torchvision still has it."""
    if FUNCTIONAL_TENSOR in sys.modules or importlib.util.find_spec(FUNCTIONAL_TENSOR) is not None:
        return
    stand_in = types.ModuleType(FUNCTIONAL_TENSOR)
    stand_in.rgb_to_grayscale = tv_functional.rgb_to_grayscale
    sys.modules[FUNCTIONAL_TENSOR] = stand_in


install_functional_tensor_stand_in()

from basicsr.models.base_model import BaseModel  # noqa: E402  (needs the stand-in above)
from basicsr.utils import dist_util  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402


def init_dist_pytorch(backend, **kwargs):
    """Fix 2: BasicSR's ``_init_dist_pytorch`` that also runs without CUDA (gloo) and honours LOCAL_RANK."""
    if torch.cuda.is_available():
        default_device = int(os.environ['RANK']) % torch.cuda.device_count()
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', default_device)))
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


_cuda_model_to_device = BaseModel.model_to_device


def model_to_device(self, net):
    """Fix 3: wrap in DDP without CUDA device ids when the model lives on the CPU."""
    if self.opt['dist'] and self.device.type == 'cpu':
        find_unused_parameters = self.opt.get('find_unused_parameters', False)
        return DistributedDataParallel(net.to(self.device), find_unused_parameters=find_unused_parameters)
    return _cuda_model_to_device(self, net)


def resume_map_location():
    """Fix 4: where a resumed training state goes: the current CUDA device, or the CPU without CUDA."""
    if torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        return lambda storage, loc: storage.cuda(device_id)
    return 'cpu'


def load_resume_state(opt):
    """BasicSR's ``train.load_resume_state`` with Fix 4 (the state-file search is BasicSR's)."""
    from basicsr.utils import check_resume, scandir
    resume_state_path = opt['path'].get('resume_state')
    if opt['auto_resume']:
        state_dir = opt['path']['training_states']
        if os.path.isdir(state_dir):
            iters = [float(v.split('.state')[0]) for v in scandir(state_dir, suffix='state', recursive=False)]
            if iters:
                resume_state_path = os.path.join(state_dir, f'{max(iters):.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    if not resume_state_path:
        return None
    resume_state = torch.load(resume_state_path, map_location=resume_map_location())
    check_resume(opt, resume_state['iter'])
    return resume_state


def accept_torch_local_rank_spelling(argv):
    """Fix 5: return ``argv`` with torch's ``--local-rank`` spelt as BasicSR's ``--local_rank``."""
    return [('--local_rank' + arg[len('--local-rank'):]) if arg.startswith('--local-rank') else arg for arg in argv]


def with_forced_seed(parse_options):
    """Fix 6: ``parse_options`` that seeds with a ``--force_yml manual_seed=N`` value, as with one from the file."""
    if getattr(parse_options, 'kd_forced_seed', False):
        return parse_options

    def parse(root_path, is_train=True):
        from basicsr.utils import set_random_seed
        opt, args = parse_options(root_path, is_train)
        if any(entry.split('=')[0].strip() == 'manual_seed' for entry in args.force_yml or []):
            set_random_seed(opt['manual_seed'] + opt['rank'])
        return opt, args

    parse.kd_forced_seed = True
    return parse


def patch_basicsr():
    """Apply fixes 2-4 and 6 to the imported BasicSR (idempotent)."""
    import basicsr.test
    import basicsr.train
    dist_util._init_dist_pytorch = init_dist_pytorch
    BaseModel.model_to_device = model_to_device
    basicsr.train.load_resume_state = load_resume_state
    for pipeline in (basicsr.train, basicsr.test):
        pipeline.parse_options = with_forced_seed(pipeline.parse_options)


patch_basicsr()
