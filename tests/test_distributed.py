"""DDP on CPU: ``torchrun --standalone --nproc_per_node=2 train.py -opt ... --launcher pytorch`` trains, and both ranks
hold the same student (and trainable helpers) although each rank trained on other crops.

BasicSR saves on rank 0 only, so the run uses the test-only ``KDRecording*`` model types of ``recording_train.py``
(``train.py`` plus a model that also writes every rank's networks) to see what rank 1 holds.
"""
import os

import pytest
import torch

from conftest import OPTIONS, RECORDING_TRAIN, differing_tensors, load_option, run_train, shrink_option, training_steps


@pytest.mark.parametrize('option, model_type, networks', [
    ('logits_edsr_x2.yml', 'KDRecordingLogitsModel', ['g']),
    ('fitnet_edsr_x2.yml', 'KDRecordingFeatureModel', ['g', 'reg']),
], ids=['logits', 'fitnet with a trainable regressor'])
def test_two_cpu_ranks_finish_with_identical_students(demo_root, tmp_path, option, model_type, networks):
    opt = shrink_option(load_option(os.path.join(OPTIONS, option)), demo_root, str(tmp_path), 'ddp')
    opt['model_type'] = model_type
    result = run_train(opt, str(tmp_path), launcher='torchrun', script=RECORDING_TRAIN)  # raises unless both exit 0
    assert 'World size (gpu number): 2' in result.stdout + result.stderr
    assert sorted(training_steps(result)) == [1, 2]

    root = tmp_path / 'experiments' / 'ddp'
    init, final = ([torch.load(root / f'{name}_rank{r}.pth', weights_only=True) for r in range(2)]
                   for name in ('init', 'iter-1'))
    assert final[0]['seen_lq'] != final[1]['seen_lq'], 'the ranks must train on different batches'
    assert len(final[1]['seen_lq']) == 2
    for name in networks:
        assert not differing_tensors(init[0][name], init[1][name]), f'net_{name}: DDP broadcasts rank 0 at wrapping'
        assert not differing_tensors(final[0][name], final[1][name]), f'net_{name}: the ranks diverged'
        assert differing_tensors(init[1][name], final[1][name]), f'net_{name} did not train'
        saved = torch.load(root / 'models' / f'net_{name}_latest.pth', weights_only=True)['params']
        assert not differing_tensors(saved, final[1][name])
