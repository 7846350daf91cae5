"""``--auto_resume``: a run stopped after 2 iterations continues at 3 with the optimiser, scheduler, student and
helper states it saved, which ``recording_train.py`` dumps right after BasicSR's ``resume_training``."""
import copy
import os

import torch

from conftest import (OPTIONS, RECORDING_TRAIN, assert_networks_resumed, differing_tensors, load_option, run_train,
                      shrink_option, training_steps)


def test_auto_resume_restores_optimiser_scheduler_and_networks(demo_root, tmp_path):
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'fitnet_edsr_x2.yml')), demo_root, str(tmp_path), 'resume')
    opt['model_type'] = 'KDRecordingFeatureModel'  # FitNet: the trainable regressor must resume too
    opt['train']['ema_decay'] = 0.9
    teacher = torch.load(opt['path']['pretrain_network_t'], weights_only=True)['params']
    teacher_ema = {key: 0.9 * value for key, value in teacher.items()}  # a teacher file holding both weights
    torch.save({'params': teacher, 'params_ema': teacher_ema}, opt['path']['pretrain_network_t'])
    opt['path']['param_key_t'] = 'params_ema'
    lr = opt['train']['optim_g']['lr']
    opt['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5}
    opt['logger']['save_checkpoint_freq'] = 2
    assert sorted(training_steps(run_train(opt, str(tmp_path), script=RECORDING_TRAIN))) == [1, 2]

    longer = copy.deepcopy(opt)
    longer['train']['total_iter'] = 4
    resumed_run = run_train(longer, str(tmp_path), '--auto_resume', script=RECORDING_TRAIN)
    assert 'Resuming training from epoch: 0, iter: 2.' in resumed_run.stdout + resumed_run.stderr
    steps = training_steps(resumed_run)
    # BasicSR steps the schedulers from the 2nd iteration on, so iteration i runs with last_epoch = i - 1 and the
    # milestone 3 halves the learning rate (of the student's and the regressor's group) from iteration 4 on; a
    # scheduler that restarted at resume would still be at full rate there.
    assert steps == {3: [lr, lr], 4: [lr / 2, lr / 2]}

    root = tmp_path / 'experiments' / 'resume'
    saved = torch.load(root / 'training_states' / '2.state', weights_only=False)
    resumed = torch.load(root / 'resumed_rank0.pth', weights_only=False)
    assert saved['iter'] == 2 and len(saved['optimizers']) == len(resumed['optimizers']) == 1
    loaded, stored = resumed['optimizers'][0], saved['optimizers'][0]
    assert loaded['param_groups'] == stored['param_groups']
    assert loaded['state'].keys() == stored['state'].keys() and len(stored['state']) > 0
    for index, moments in stored['state'].items():
        assert moments['step'].item() == 2 and moments['exp_avg'].abs().sum() > 0
        assert not differing_tensors(loaded['state'][index], moments)  # step, exp_avg, exp_avg_sq
    assert resumed['schedulers'] == saved['schedulers']
    assert saved['schedulers'][0]['last_epoch'] == 1 and dict(saved['schedulers'][0]['milestones']) == {3: 1}
    at_iter_2 = torch.load(root / 'iter2_rank0.pth', weights_only=True)
    assert_networks_resumed(resumed, at_iter_2, ('g', 'reg'))
    # BasicSR's check_resume turns param_key_t: params_ema into params; the resumed run must keep the EMA teacher
    assert not differing_tensors(resumed['teachers']['t'], teacher_ema)
    assert (root / 'training_states' / '4.state').is_file() and (root / 'models' / 'net_reg_4.pth').is_file()

    # The same 4 iterations without interruption: identical up to iteration 2 (fixed seed, no workers), not after:
    # BasicSR's resume restores networks, optimisers and schedulers but neither the random state nor the position in
    # the epoch, so the resumed run re-seeds and trains iterations 3-4 on the batches of iterations 1-2. Both runs
    # leave iteration 2 with the same weights, and an Adam step (betas 0.9, 0.999; t <= 4) moves a weight by at most
    # ~1.004 lr (Cauchy-Schwarz on the bias-corrected moments), so the runs end within 2 * 1.01 * (lr + lr / 2).
    straight = copy.deepcopy(longer)
    straight['name'] = 'straight'
    straight_run = run_train(straight, str(tmp_path), script=RECORDING_TRAIN)
    assert {i: lrs for i, lrs in training_steps(straight_run).items() if i > 2} == steps
    other = tmp_path / 'experiments' / 'straight'
    other_at_2, other_at_4 = (torch.load(other / f'iter{i}_rank0.pth', weights_only=True) for i in (2, 4))
    at_iter_4 = torch.load(root / 'iter4_rank0.pth', weights_only=True)
    assert other_at_2['seen_lq'] == at_iter_2['seen_lq'] == at_iter_4['seen_lq'] != other_at_4['seen_lq'][2:]
    for name in ('g', 'reg'):
        assert not differing_tensors(other_at_2[name], at_iter_2[name])
        difference = max((other_at_4[name][k] - at_iter_4[name][k]).abs().max().item() for k in at_iter_4[name])
        assert 0 < difference <= 2 * 1.01 * (lr + lr / 2), f'net_{name}: {difference}'
