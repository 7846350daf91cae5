"""DDP on CPU: ``torchrun --nproc_per_node=2 train.py ... --launcher pytorch`` trains and keeps the ranks in step."""
import os

import torch

from conftest import OPTIONS, RECORDING_TRAIN, load_option, run_train, shrink_option


def test_two_cpu_ranks_hold_identical_students_and_helpers(demo_root, tmp_path):
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'fitnet_edsr_x2.yml')), demo_root, str(tmp_path), 'ddp',
                        total_iter=3)
    opt['model_type'] = 'KDRecordingFeatureModel'
    result = run_train(opt, str(tmp_path), launcher='torchrun', script=RECORDING_TRAIN)
    assert 'World size (gpu number): 2' in result.stderr + result.stdout
    root = tmp_path / 'experiments' / 'ddp'
    ranks = [torch.load(root / f'rank{r}_iter3.pth', weights_only=True) for r in range(2)]
    for name in ('g', 'reg'):
        assert ranks[0][name].keys() == ranks[1][name].keys()
        assert all(torch.equal(ranks[0][name][k], ranks[1][name][k]) for k in ranks[0][name])
    saved = torch.load(root / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert all(torch.equal(saved[k], ranks[1]['g'][k]) for k in saved)
    initial = torch.load(root / 'rank0_iter3.pth', weights_only=True)['reg']
    assert initial.keys() == ranks[0]['reg'].keys()
