"""An option dict as BasicSR's ``parse_options`` leaves it for one process, for the tools that build a model
in-process (the tests, ``benchmarks/kd_step.py``, ``datasets_prep/cache_teacher_outputs.py``)."""
import copy
import os

EXPERIMENT_FOLDERS = {'experiments_root': '', 'models': 'models', 'training_states': 'training_states', 'log': '',
                      'visualization': 'visualization'}


def parsed_options(opt, experiments_root, is_train=True, num_gpu=None):
    """A copy of ``opt`` with the keys ``parse_options`` adds (one process, no launcher, no resume), its experiment
    folders created under ``experiments_root``, and each dataset's ``phase`` and ``scale``.

    Args:
        opt (dict): The option file's dict.
        experiments_root (str): The folder of the run's models, states and logs.
        is_train (bool): Training (True) or testing options.
        num_gpu (int | None): Set ``num_gpu`` (0: CPU); None keeps the file's.
    """
    opt = copy.deepcopy(opt)
    opt.update(is_train=is_train, dist=False, rank=0, world_size=1, auto_resume=False)
    if num_gpu is not None:
        opt['num_gpu'] = num_gpu
    for key, sub in EXPERIMENT_FOLDERS.items():
        opt['path'][key] = os.path.join(experiments_root, sub)
        os.makedirs(opt['path'][key], exist_ok=True)
    for phase, dataset in opt.get('datasets', {}).items():
        dataset.update(phase=phase.split('_')[0], scale=opt.get('scale', 1))
    return opt
