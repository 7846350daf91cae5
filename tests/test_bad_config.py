"""A wrong configuration stops train.py before the first training step, with a message naming the option."""
import os

import cv2
import numpy as np
import pytest

from conftest import OPTIONS, load_option, run_train, shrink_option, training_steps


def missing_teacher_file(opt, tmp_path):
    opt['path']['pretrain_network_t'] = str(tmp_path / 'nowhere.pth')


def teacher_of_other_scale(opt, tmp_path):
    opt['network_t']['upscale'] = 4


def unknown_arch_type(opt, tmp_path):
    opt['network_t']['type'] = 'EDSRR'


def empty_lq_folder(opt, tmp_path):
    (tmp_path / 'empty').mkdir()
    opt['datasets']['train']['dataroot_lq'] = str(tmp_path / 'empty')


def gt_image_without_lq_partner(opt, tmp_path):
    """The training GT folder plus one image that has no LQ partner."""
    folder = tmp_path / 'gt_plus_one'
    folder.mkdir()
    source = opt['datasets']['train']['dataroot_gt']
    for name in os.listdir(source):
        os.link(os.path.join(source, name), folder / name)
    cv2.imwrite(str(folder / 'extra.png'), np.zeros((32, 32, 3), np.uint8))
    opt['datasets']['train']['dataroot_gt'] = str(folder)


def patch_larger_than_the_training_images(opt, tmp_path):
    opt['datasets']['train']['gt_size'] = 1000  # the demo's training photographs are about 500 pixels high


def taps_out_of_execution_order(opt, tmp_path):
    opt['train']['feature_taps'] = {'network_t': ['conv_after_body', 'body.0']}


CASES = [
    (missing_teacher_file, ['path.pretrain_network_t', 'nowhere.pth', 'no such file']),
    (teacher_of_other_scale, ['network_t.upscale = 4', 'scale = 2']),
    (unknown_arch_type, ['network_t.type = EDSRR', "No object named 'EDSRR'", 'basicsr-kd registers']),
    (empty_lq_folder, ['datasets.train.dataroot_lq', 'holds no images']),
    (gt_image_without_lq_partner, ['datasets.train', 'do not pair', 'extra.png']),
    (patch_larger_than_the_training_images, ['datasets.train.gt_size = 1000', 'GT images are smaller']),
    (taps_out_of_execution_order, ["train.feature_taps.network_t = ['conv_after_body', 'body.0']",
                                   "in the order it runs in the forward pass", "['body.0', 'conv_after_body']"]),
]


@pytest.mark.parametrize('break_option, words', [pytest.param(*case, id=case[0].__name__) for case in CASES])
def test_train_stops_before_the_first_step_naming_the_option(demo_root, tmp_path, break_option, words):
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'logits_edsr_x2.yml')), demo_root, str(tmp_path), 'bad')
    break_option(opt, tmp_path)
    result = run_train(opt, str(tmp_path), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert training_steps(result) == {} and 'Start training' not in output
    missing = [word for word in words if word not in output]
    assert not missing, f'{missing} not in:\n{output[-3000:]}'
