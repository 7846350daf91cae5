"""``--auto_resume`` continues where a run stopped, with the saved optimiser, scheduler and helper states."""
import copy
import os

import torch

from conftest import OPTIONS, RECORDING_TRAIN, load_option, run_train, shrink_option


def test_auto_resume_restores_optimiser_scheduler_and_helpers(demo_root, tmp_path):
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'fitnet_edsr_x2.yml')), demo_root, str(tmp_path), 'resume')
    opt['model_type'] = 'KDRecordingFeatureModel'
    opt['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5}
    run_train(opt, str(tmp_path), script=RECORDING_TRAIN)
    root = tmp_path / 'experiments' / 'resume'
    saved = torch.load(root / 'training_states' / '2.state', weights_only=False)

    longer = copy.deepcopy(opt)
    longer['train']['total_iter'] = 4
    result = run_train(longer, str(tmp_path), '--auto_resume', script=RECORDING_TRAIN)
    log = result.stderr + result.stdout
    assert 'Resuming training from epoch' in log and 'iter: 2.' in log
    assert 'iter:       3' in log and 'iter:       1,' not in log
    resumed = torch.load(root / 'resumed_rank0.pth', weights_only=False)
    for loaded, stored in zip(resumed['optimizers'], saved['optimizers']):
        assert loaded['param_groups'] == stored['param_groups']
        for index, moments in stored['state'].items():
            assert torch.equal(loaded['state'][index]['exp_avg'], moments['exp_avg'])
            assert torch.equal(loaded['state'][index]['step'], moments['step'])
    assert resumed['schedulers'] == saved['schedulers']
    assert resumed['schedulers'][0]['last_epoch'] == 2
    # the regressor went on from its iteration-2 weights (BasicSR's check_resume pointed it at net_reg_2.pth)
    saved_regressor = torch.load(root / 'models' / 'net_reg_2.pth', weights_only=True)['params']
    assert all(torch.equal(resumed['helpers']['reg'][k], v) for k, v in saved_regressor.items())
    before_resume = torch.load(root / 'rank0_iter2.pth', weights_only=True)['reg']
    assert all(torch.equal(before_resume[k], v) for k, v in saved_regressor.items())
    assert (root / 'models' / 'net_reg_4.pth').is_file()
