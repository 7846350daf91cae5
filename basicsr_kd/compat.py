"""What basicsr-kd changes in BasicSR 1.4.2 so that it runs with current torch/torchvision, on CPU, and resumes safely.

``patch_basicsr()`` applies the fixes; the entry points (``train.py``, ``test.py``, ``kd-train``, ``kd-test``) call
it, importing our networks, losses or models does not. Each fix is a no-op where BasicSR already works (a machine with
CUDA). Fix 1, the ``functional_tensor`` stand-in without which BasicSR cannot be imported, is in
``basicsr_kd/__init__.py``.

2. ``--launcher pytorch`` without CUDA: BasicSR hard-codes NCCL and ``torch.cuda.set_device``; we use gloo and no
   device. With CUDA the device is ``LOCAL_RANK`` (BasicSR's ``RANK % num_gpus`` when LOCAL_RANK is unset).
3. ``BaseModel.model_to_device`` passes ``torch.cuda.current_device()`` to DDP; on CPU DDP gets no device ids.
4. Resuming maps the saved state to ``torch.cuda.current_device()``; without CUDA we map it to the CPU.
5. torch's launchers spell ``--local-rank``; BasicSR's parser only knows ``--local_rank``.
6. ``parse_options`` seeds the run before it applies ``--force_yml``, so ``--force_yml manual_seed=N`` is
   recorded but not used; we seed again with the forced value (nothing random happens in between).
7. ``--auto_resume`` takes the newest ``.state`` file even when it is truncated (a run killed while writing it) and
   then fails on every restart; we take the newest state that loads, with a warning naming each one skipped.
8. ``check_resume`` rewrites every ``path.param_key_*: params_ema`` to ``params``, also those of frozen networks
   (``ignore_resume_networks``), whose weights must not change on resume: we keep theirs. (Our models also check,
   on resume, that every frozen network holds the weights the run started with: that covers a BasicSR fork's own
   ``train.py`` too.)
"""
import os

import torch
import torch.distributed as dist
from basicsr.models.base_model import BaseModel
from basicsr.utils import dist_util
from torch.nn.parallel import DistributedDataParallel


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


def newest_complete_state(state_dir):
    """(path, loaded state) of the newest ``<iter>.state`` in ``state_dir`` that loads, or (None, None); a state
    that does not load (truncated, corrupt) is skipped with a warning."""
    from basicsr.utils import get_root_logger, scandir
    iters = sorted((int(float(name[:-len('.state')])) for name in scandir(state_dir, suffix='.state')), reverse=True)
    for current_iter in iters:
        path = os.path.join(state_dir, f'{current_iter}.state')
        try:
            return path, torch.load(path, map_location=resume_map_location(), weights_only=False)
        except Exception as error:  # noqa: BLE001  (any unpickling failure means the file is incomplete)
            get_root_logger().warning(f'--auto_resume: {path} does not load ({type(error).__name__}: {error}); '
                                      'it is incomplete (a run stopped while writing it?). Trying an older state.')
    return None, None


def load_resume_state(opt):
    """BasicSR's ``train.load_resume_state`` with fixes 4, 7 and 8."""
    from basicsr.utils import check_resume
    resume_state_path, resume_state = opt['path'].get('resume_state'), None
    if opt['auto_resume'] and os.path.isdir(opt['path']['training_states']):
        path, state = newest_complete_state(opt['path']['training_states'])
        if path is not None:
            resume_state_path, resume_state = path, state
            opt['path']['resume_state'] = path
    if not resume_state_path:
        return None
    if resume_state is None:
        resume_state = torch.load(resume_state_path, map_location=resume_map_location(), weights_only=False)
    ignored = opt['path'].get('ignore_resume_networks') or []
    frozen_keys = {key: value for key, value in opt['path'].items()
                   if key.startswith('param_key_') and f'network_{key[len("param_key_"):]}' in ignored}
    check_resume(opt, resume_state['iter'])
    opt['path'].update(frozen_keys)  # fix 8: check_resume must not turn a frozen network's params_ema into params
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
    """Apply fixes 2-4 and 6-8 to BasicSR (idempotent; fix 5 is applied to ``sys.argv`` by the entry points)."""
    import basicsr.test
    import basicsr.train
    dist_util._init_dist_pytorch = init_dist_pytorch
    BaseModel.model_to_device = model_to_device
    basicsr.train.load_resume_state = load_resume_state
    for pipeline in (basicsr.train, basicsr.test):
        pipeline.parse_options = with_forced_seed(pipeline.parse_options)
