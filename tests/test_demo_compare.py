"""The demo comparison (basicsr_kd/demo_compare.py) shrunk to one seed and a few iterations, its runs' resumption
(basicsr_kd/demo_runs.py) and the crop it shows (basicsr_kd/demo_figures.py)."""
import os
import subprocess

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network

from basicsr_kd import demo_compare, demo_runs
from basicsr_kd.demo_figures import disagreement_crop


def test_a_method_brings_its_references_and_teachers():
    keys = [arm.key for arm in demo_compare.selected_arms(['mtkd'])]
    assert keys == ['teacher', 'teacher_rcan', 'teacher_swinir', 'mtkd_stage1', 'scratch', 'logits', 'mtkd']
    keys = [arm.key for arm in demo_compare.selected_arms(['skd'])]
    assert keys == ['rest_teacher', 'rest_scratch', 'rest_logits', 'skd']
    with pytest.raises(SystemExit, match='unknown'):
        demo_compare.selected_arms(['teacher'])  # a teacher is not a student


def test_every_arm_names_an_option_file_that_reads_the_teachers_it_needs():
    """The arms' dependencies (which teachers train first) match the weights their option files load."""
    runs = {arm.key: demo_compare.run_name(arm, 0) for arm in demo_compare.ARMS if not arm.seeded}
    for arm in demo_compare.ARMS:
        opt = demo_runs.load_demo_option(arm.option)
        paths = [path for key, path in opt['path'].items() if key.startswith('pretrain_network_') and path]
        read = {key for key, name in runs.items() for path in paths if path == demo_runs.checkpoint('.', name)[2:]}
        assert read == set(arm.needs), arm.key


def test_other_iterations_scale_the_dckd_history_schedule_to_the_same_fractions_of_the_run():
    opt = demo_runs.load_demo_option('demo_student_dckd_x2')
    assert opt['train']['total_iter'] == 1000 and opt['train']['history']['update_schedule'] == [
        [400, 4], [800, 8], [1200, 12]]
    assert demo_compare.schedule(2500, opt)['train:history:update_schedule'] == [[1000, 10], [2000, 20], [3000, 30]]
    assert demo_compare.schedule(40, opt)['train:history:update_schedule'] == [[16, 1], [32, 1], [48, 1]]
    assert 'train:history:update_schedule' not in demo_compare.schedule(1000, opt)
    assert 'train:history:update_schedule' not in demo_compare.schedule(40, demo_runs.load_demo_option(
        'demo_student_logits_x2'))


def test_the_seeded_random_frozen_file_is_written_again_and_two_networks_cannot_share_it(tmp_path):
    args = demo_compare.parse_args(['--out', str(tmp_path), '--seeds', '0'])
    runs = demo_compare.plan_runs(demo_compare.selected_arms(['dckd', 'dckd_star']), args, {'sr': {}})
    target = tmp_path / 'frozen' / 'vqgan_demo.pth'
    target.parent.mkdir()
    target.write_bytes(b'stale weights of another shape')
    assert demo_compare.prepare_frozen(runs, {}, str(tmp_path)) == {'vqgan': 'random weights (seeded; no file given)'}
    first = target.read_bytes()
    assert first != b'stale weights of another shape'
    demo_compare.prepare_frozen(runs, {}, str(tmp_path))
    assert target.read_bytes() == first  # seeded: bit-identical
    star = next(run for run in runs if run.arm.key == 'dckd_star')
    star.changes['network_vqgan'] = dict(demo_runs.load_demo_option(star.arm.option)['network_vqgan'], embed_dim=8)
    with pytest.raises(SystemExit, match='network_vqgan differs'):
        demo_compare.prepare_frozen(runs, {}, str(tmp_path))


def test_the_crop_is_where_the_outputs_differ():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 256, (60, 70, 3)).astype(np.uint8) for _ in range(2)]
    outputs = [[gt.copy() for gt in gts] for _ in range(3)]
    outputs[1][1][30:38, 41:49] = 0  # one output wrong in one place of the second image
    assert disagreement_crop(outputs, gts, 8) == (1, 30, 41)


def state_iterations(out, run):
    return sorted(int(name.split('.')[0]) for name in demo_runs.training_states(out, run))


def test_a_stopped_run_resumes_from_its_last_state_and_a_changed_one_starts_again(demo_root, tmp_path):
    out = str(tmp_path)
    data = {'datasets:train:dataroot_gt': os.path.join(demo_root, 'train', 'HR'),
            'datasets:train:dataroot_lq': os.path.join(demo_root, 'train', 'LR_bicubic', 'X2'),
            'datasets:train:gt_size': 24, 'datasets:train:batch_size_per_gpu': 2,
            **demo_compare.schedule(4), 'logger:print_freq': 1}
    seen = []
    demo_runs.train('demo_student_scratch_x2', 'run', data, out, progress=lambda *a: seen.append(a[1:]))
    assert seen[-1] == (4, 4) and state_iterations(out, 'run') == [1, 2, 3, 4]
    first = os.path.getmtime(demo_runs.checkpoint(out, 'run'))
    demo_runs.train('demo_student_scratch_x2', 'run', data, out)  # finished, same options: kept
    assert os.path.getmtime(demo_runs.checkpoint(out, 'run')) == first
    models = os.path.join(out, 'experiments', 'run', 'models')
    for name in ('net_g_latest.pth', 'net_g_4.pth', 'net_g_3.pth'):  # as if stopped after iteration 2's state
        os.remove(os.path.join(models, name))
    for name in ('3.state', '4.state'):
        os.remove(os.path.join(out, 'experiments', 'run', 'training_states', name))
    seen.clear()
    demo_runs.train('demo_student_scratch_x2', 'run', data, out, progress=lambda *a: seen.append(a[1:]))
    assert [iteration for iteration, _ in seen] == [3, 4]  # continued after iteration 2
    log = ''.join(open(os.path.join(out, 'experiments', 'run', name)).read()
                  for name in os.listdir(os.path.join(out, 'experiments', 'run')) if name.endswith('.log'))
    assert 'Resuming training from epoch' in log and 'iter: 2' in log
    demo_runs.train('demo_student_scratch_x2', 'run', {**data, 'manual_seed': 5}, out)  # other options: anew
    with open(os.path.join(out, 'options', 'run.yml')) as f:
        assert yaml.safe_load(f)['manual_seed'] == 5
    assert 'Resuming' not in ''.join(open(os.path.join(out, 'experiments', 'run', name)).read()
                                     for name in os.listdir(os.path.join(out, 'experiments', 'run'))
                                     if name.endswith('.log'))


def test_a_finished_student_trains_again_when_its_teacher_changed(demo_root, tmp_path):
    """A student is kept only while the teacher file it read is the same: a teacher trained again is not silently
    paired with students of the old one."""
    out = str(tmp_path)
    data = {'datasets:train:dataroot_gt': os.path.join(demo_root, 'train', 'HR'),
            'datasets:train:dataroot_lq': os.path.join(demo_root, 'train', 'LR_bicubic', 'X2'),
            'datasets:train:gt_size': 24, 'datasets:train:batch_size_per_gpu': 2,
            **demo_compare.schedule(2), 'logger:print_freq': 1}
    teacher_opt = demo_runs.load_demo_option('demo_student_logits_x2')['network_t']
    teacher_path = demo_runs.checkpoint(out, 'demo_teacher_x2')
    os.makedirs(os.path.dirname(teacher_path))

    def write_teacher(seed):
        torch.manual_seed(seed)
        torch.save({'params_ema': build_network(teacher_opt).state_dict()}, teacher_path)

    write_teacher(0)
    demo_runs.train('demo_student_logits_x2', 'run', data, out)
    first = os.path.getmtime(demo_runs.checkpoint(out, 'run'))
    write_teacher(0)  # the same weights written again: kept
    demo_runs.train('demo_student_logits_x2', 'run', data, out)
    assert os.path.getmtime(demo_runs.checkpoint(out, 'run')) == first
    write_teacher(1)  # another teacher: trained anew
    demo_runs.train('demo_student_logits_x2', 'run', data, out)
    assert os.path.getmtime(demo_runs.checkpoint(out, 'run')) != first


SHRUNK_METHODS = ['dckd', 'mtkd', 'skd', 'pisr']


@pytest.fixture(scope='module')
def shrunk(tmp_path_factory):
    """The comparison of SHRUNK_METHODS (with their references and every teacher they need), one seed, 4 iterations
    per run. Every arm's option file trains in test_option_files; these four bring the teacher chains (MTKD's three
    teachers and aggregator; PISR's teacher, fed HR at evaluation), both tasks and both frozen networks."""
    root = tmp_path_factory.mktemp('compare')
    argv = ['--seeds', '0', '--iterations', '4', '--teacher-iterations', '4', '--print-freq', '1',
            '--methods', *SHRUNK_METHODS, '--data', str(root / 'data'), '--out', str(root / 'out')]
    demo_compare.main(argv)
    return root, argv


def test_the_shrunk_comparison_writes_every_selected_row_and_figure(shrunk):
    root, _ = shrunk
    text = (root / 'out' / 'results.md').read_text()
    rows = [line.split(' | ')[0].lstrip('| ') for line in text.splitlines() if line.startswith('| ')]
    assert rows.count('from scratch') == 2 and rows.count('Logits KD') == 2
    arms = demo_compare.selected_arms(SHRUNK_METHODS)
    assert len(arms) == 14 and set(rows) - {'method', '---'} == {arm.label for arm in arms} | {'bicubic', 'noisy input'}
    assert 'Frozen network `vqgan`: random weights' in text and 'Frozen network `vgg`: random weights' in text
    for name in ('gains.png', 'crops_sr.png', 'crops_restoration.png'):
        image = cv2.imread(str(root / 'out' / name))
        assert image is not None and min(image.shape[:2]) > 150, name  # a bar per selected arm


def test_run_again_the_comparison_trains_nothing(shrunk, monkeypatch):
    root, argv = shrunk

    def refuse(*args, **kwargs):
        raise AssertionError('a finished run was trained again')

    monkeypatch.setattr(subprocess, 'Popen', refuse)
    demo_compare.main(argv)
