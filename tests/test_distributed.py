"""DDP on CPU: ``torchrun --standalone --nproc_per_node=2 train.py -opt ... --launcher pytorch`` trains, and both ranks
hold the same student (and trainable helpers) although each rank trained on other crops (also when each rank crops
its batch to a progressive schedule, from pairs padded to the patch).

BasicSR saves on rank 0 only, so the run uses the test-only ``KDRecording*`` model types of ``recording_train.py``
(``train.py`` plus a model that also writes every rank's networks) to see what rank 1 holds.
"""
import os

import pytest
import torch

from conftest import OPTIONS, differing_tensors, load_option, shrink_option, two_rank_run


@pytest.mark.parametrize('option, model_type, networks, data', [
    ('logits_edsr_x2.yml', 'KDRecordingLogitsModel', ['g'], 'demo_root'),
    ('fitnet_edsr_x2.yml', 'KDRecordingFeatureModel', ['g', 'reg'], 'demo_root'),
    ('logits_restormer_derain.yml', 'KDRecordingLogitsModel', ['g'], 'restoration_root'),
    ('wavekd_restormer_derain.yml', 'KDRecordingWaveKDModel', ['g'], 'restoration_root'),
    ('lsfd_edsr_x2.yml', 'KDRecordingFeatureModel', ['g', 'reg'], 'demo_root'),
    ('dukd_edsr_x2.yml', 'KDRecordingDUKDModel', ['g'], 'demo_root'),
    ('csd_edsr_x2.yml', 'KDRecordingCSDModel', ['g'], 'demo_root'),
    ('dfkd_restormer_derain.yml', 'KDRecordingDFKDModel', ['g', 'gen'], 'restoration_root'),
    ('pisr_stage1_edsr_x2.yml', 'KDRecordingPISRTeacherModel', ['g'], 'demo_root'),
    ('pisr_edsr_x2.yml', 'KDRecordingPISRStudentModel', ['g', 'vid'], 'demo_root'),
    ('mipkd_rcan_x2.yml', 'KDRecordingMiPKDModel', ['g', 'mixer'], 'demo_root'),
], ids=['logits', 'fitnet with a trainable regressor', 'progressive patches of padded pairs', 'wavekd',
        'lsfd with a five-layer regressor', 'dukd: two student forwards (LQ + zoom-in, zoom-out) per step',
        'csd: both widths in one DDP forward',
        'dfkd: the generator, trained by its own optimiser, synchronised too',
        'pisr stage 1: the teacher fed GT, its encoder hooked', 'pisr: the VID regressor, the teacher fed GT',
        'mipkd: a second student or teacher forward, decoders unused on some steps (find_unused_parameters)'])
def test_two_cpu_ranks_finish_with_identical_students(request, tmp_path, option, model_type, networks, data):
    opt = shrink_option(load_option(os.path.join(OPTIONS, option)), request.getfixturevalue(data), str(tmp_path), 'ddp')
    opt['model_type'] = model_type
    if opt['train'].get('progressive_patches'):  # 32² x 1, then 64² x 2 from the 60 x 76 pairs padded to 64²
        opt['datasets']['train']['gt_size'] = 64
        opt['train']['progressive_patches'] = [[1, 32, 1], [2, 64, 2]]
    init, final, result = two_rank_run(opt, str(tmp_path))
    if opt['train'].get('progressive_patches'):  # rank 0 logs (BasicSR's logger is quiet on the other ranks)
        assert 'Progressive patches: GT 64x64, batch 2 from iteration 2' in result.stdout + result.stderr

    root = tmp_path / 'experiments' / 'ddp'
    assert len(final[1]['seen_lq']) == 2
    for name in networks:
        assert not differing_tensors(init[0][name], init[1][name]), f'net_{name}: DDP broadcasts rank 0 at wrapping'
        assert not differing_tensors(final[0][name], final[1][name]), f'net_{name}: the ranks diverged'
        assert differing_tensors(init[1][name], final[1][name]), f'net_{name} did not train'
        saved = torch.load(root / 'models' / f'net_{name}_latest.pth', weights_only=True)
        saved = saved.get('supernet_params', saved['params'])  # CSD's params: the student slice of the super-network
        assert not differing_tensors(saved, final[1][name])
