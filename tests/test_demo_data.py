"""datasets_prep/make_demo_sr.py: counts, sizes, pairing, bicubic LR, split, idempotence, errors."""
import os

import cv2
import numpy as np
import pytest

from datasets_prep.make_demo_sr import build_demo_set, read_photo


def read(path):
    return cv2.imread(str(path))[..., ::-1]


def test_layout_sizes_and_pairing(demo_root):
    for split, count in (('train', None), ('val', 1)):
        hr_names = sorted(os.listdir(os.path.join(demo_root, split, 'HR')))
        if count:
            assert len(hr_names) == count
        for scale in (2, 3, 4):
            lr_folder = os.path.join(demo_root, split, 'LR_bicubic', f'X{scale}')
            assert sorted(os.listdir(lr_folder)) == hr_names
            for name in hr_names:
                hr, lr = read(os.path.join(demo_root, split, 'HR', name)), read(os.path.join(lr_folder, name))
                assert hr.shape[0] % 12 == 0 and hr.shape[1] % 12 == 0
                assert lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
    train = os.listdir(os.path.join(demo_root, 'train', 'HR'))
    assert all(name.startswith(('astronaut_s', 'chelsea_s')) for name in train)
    assert sorted(os.listdir(os.path.join(demo_root, 'val', 'HR'))) == ['camera.png']


def test_training_tiles_cover_the_photo_in_raster_order(demo_root):
    photo = read_photo('astronaut.png')  # 512x512 -> centre crop 504x504 -> 4x4 tiles of 120
    tiles = sorted(n for n in os.listdir(os.path.join(demo_root, 'train', 'HR')) if n.startswith('astronaut'))
    assert len(tiles) == 16
    second = read(os.path.join(demo_root, 'train', 'HR', tiles[1]))
    assert np.array_equal(second, photo[4:124, 124:244])


def test_lr_is_matlab_bicubic_of_hr(demo_root):
    name = 'camera.png'
    hr = read(os.path.join(demo_root, 'val', 'HR', name)).astype(np.float64)
    for scale in (2, 4):
        lr = read(os.path.join(demo_root, 'val', 'LR_bicubic', f'X{scale}', name)).astype(np.float64)
        # MATLAB's bicubic with antialiasing is close to (not equal to) OpenCV's area average
        area = cv2.resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale), interpolation=cv2.INTER_AREA)
        assert np.abs(lr - area).mean() < 4
        # and a transposed or shifted image would be far off
        assert np.abs(lr - np.roll(area, 3, axis=1)).mean() > 2 * np.abs(lr - area).mean()


def test_rebuild_is_skipped_unless_forced(tmp_path):
    root = str(tmp_path / 'demo')
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1, train_tile=240)
    path = os.path.join(root, 'val', 'HR', 'camera.png')
    stamp = os.path.getmtime(path)
    os.utime(path, (stamp - 100, stamp - 100))
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1, train_tile=240)
    assert os.path.getmtime(path) == stamp - 100
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1, train_tile=240, force=True)
    assert os.path.getmtime(path) > stamp - 100


@pytest.mark.parametrize('kwargs, words', [({'scales': (5, )}, 'scales [5]'), ({'num_train': 9}, 'num_train (9)'),
                                           ({'train_tile': 100}, 'multiple of 12')])
def test_bad_arguments_are_refused(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words.replace('[', r'\[').replace('(', r'\(').replace(')', r'\)')):
        build_demo_set(str(tmp_path), **kwargs)
