"""A wrong configuration stops train.py before the first step, with a message naming the option."""
import os

import cv2
import numpy as np
import pytest

from conftest import OPTIONS, load_option, run_train, shrink_option


def empty_lq_folder(opt, tmp_path):
    folder = tmp_path / 'empty'
    folder.mkdir()
    opt['datasets']['train']['dataroot_lq'] = str(folder)


def unpaired_folders(opt, tmp_path):
    folder = tmp_path / 'gt_plus_one'
    folder.mkdir()
    source = opt['datasets']['train']['dataroot_gt']
    for name in os.listdir(source):
        os.link(os.path.join(source, name), folder / name)
    cv2.imwrite(str(folder / 'extra.png'), np.zeros((32, 32, 3), np.uint8))
    opt['datasets']['train']['dataroot_gt'] = str(folder)


@pytest.mark.parametrize('change, words', [
    (lambda o, p: o['path'].update(pretrain_network_t=str(p / 'nowhere.pth')), ['path.pretrain_network_t', 'nowhere.pth']),
    (lambda o, p: o['network_t'].update(upscale=4), ['network_t.upscale = 4']),
    (lambda o, p: o['network_t'].update(type='EDSRR'), ["No object named 'EDSRR'", 'basicsr-kd registers']),
    (empty_lq_folder, ['datasets.train.dataroot_lq', 'holds no images']),
    (unpaired_folders, ['datasets.train', 'do not pair', 'extra.png']),
], ids=['missing teacher file', 'scale mismatch', 'unknown type', 'empty folder', 'unpaired folders'])
def test_train_stops_before_the_first_step(demo_root, tmp_path, change, words):
    opt = shrink_option(load_option(os.path.join(OPTIONS, 'logits_edsr_x2.yml')), demo_root, str(tmp_path), 'bad')
    change(opt, tmp_path)
    result = run_train(opt, str(tmp_path), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'iter:       1' not in output
    assert all(word in output for word in words), output[-3000:]
