"""datasets_prep/make_demo_sr.py: layout, counts, sizes, pairing, split, bicubic LR, idempotence, errors."""
import os
import socket
import sys

import cv2
import numpy as np
import pytest

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
import skimage.data
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.matlab_functions import imresize
from datasets_prep import make_demo_sr
from datasets_prep.make_demo_sr import build_demo_set

SCALES = (2, 3, 4)
NUM_TRAIN, NUM_VAL = 3, 2  # motorcycle, immunohistochemistry, hubble_left | astronaut, chelsea


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


def listing(folder):
    return sorted(os.listdir(folder))


def refuse_network(*args, **kwargs):
    raise OSError('make_demo_sr tried to use the network')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """A small demo set built with networking refused: the photographs must come from the scikit-image wheel."""
    root = str(tmp_path_factory.mktemp('demo_sr'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, 'connect', refuse_network)
        patch.setattr(socket, 'create_connection', refuse_network)
        names = build_demo_set(root, scales=SCALES, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root, names


def test_counts_pairing_and_disjoint_splits(demo):
    root, names = demo
    assert names == {'train': ['motorcycle', 'immunohistochemistry', 'hubble_left'], 'val': ['astronaut', 'chelsea']}
    for split, count in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        hr_files = listing(os.path.join(root, split, 'HR'))
        assert hr_files == sorted(f'{name}.png' for name in names[split]) and len(hr_files) == count
        assert listing(os.path.join(root, split, 'LR_bicubic')) == [f'X{s}' for s in SCALES]
        for scale in SCALES:
            assert listing(os.path.join(root, split, 'LR_bicubic', f'X{scale}')) == hr_files
    assert not set(names['train']) & set(names['val'])
    assert listing(root) == ['train', 'val']  # nothing else written (no temporary files left)


def test_default_split_is_disjoint_down_to_the_source_photographs():
    splits = make_demo_sr.split_photos(8, 4)
    assert [len(splits['train']), len(splits['val'])] == [8, 4]
    train_sources, val_sources = ({function for _, function, _ in entries} for entries in splits.values())
    assert not train_sources & val_sources  # crops of one photograph never straddle the splits
    assert [name for name, _, _ in splits['val']] == ['rocket', 'coffee', 'astronaut', 'chelsea']


def test_hr_is_the_centre_crop_of_the_bundled_photo(demo):
    root, _ = demo
    chelsea = read_rgb(os.path.join(root, 'val', 'HR', 'chelsea.png'))  # 300x451 -> 300x444
    assert np.array_equal(chelsea, skimage.data.chelsea()[:, 3:447])  # also catches swapped colour channels
    hubble = read_rgb(os.path.join(root, 'train', 'HR', 'hubble_left.png'))  # left half 872x500 -> 864x492
    assert np.array_equal(hubble, skimage.data.hubble_deep_field()[4:868, 4:496])


def test_sizes_and_lr_is_matlab_bicubic_of_hr(demo):
    root, names = demo
    for split in ('train', 'val'):
        for name in names[split]:
            hr = read_rgb(os.path.join(root, split, 'HR', f'{name}.png'))
            assert hr.dtype == np.uint8 and hr.ndim == 3 and hr.shape[2] == 3
            assert hr.shape[0] % 12 == 0 and hr.shape[1] % 12 == 0
            for scale in SCALES:
                lr = read_rgb(os.path.join(root, split, 'LR_bicubic', f'X{scale}', f'{name}.png'))
                assert lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3), (name, scale)
                expected = np.clip(np.round(imresize(hr / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)
                assert np.array_equal(lr, expected), (name, scale)
                # independent of BasicSR: OpenCV's resizes are close, a shifted or flipped image is not
                size = (hr.shape[1] // scale, hr.shape[0] // scale)
                area = cv2.resize(hr, size, interpolation=cv2.INTER_AREA).astype(np.float64)
                cubic = cv2.resize(hr, size, interpolation=cv2.INTER_CUBIC).astype(np.float64)
                assert np.abs(lr - area).mean() < 3 and np.abs(lr - cubic).mean() < 10, (name, scale)
                assert np.abs(lr - np.roll(area, 1, axis=1)).mean() > 3 and np.abs(lr - area[::-1]).mean() > 3


def test_basicsr_pairs_the_folders(demo):
    root, _ = demo
    dataset = PairedImageDataset({
        'dataroot_gt': os.path.join(root, 'val', 'HR'), 'dataroot_lq': os.path.join(root, 'val', 'LR_bicubic', 'X3'),
        'filename_tmpl': '{}', 'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 3})
    assert len(dataset) == NUM_VAL
    item = dataset[0]
    assert os.path.basename(item['gt_path']) == os.path.basename(item['lq_path']) == 'astronaut.png'
    assert tuple(item['gt'].shape) == (3, 504, 504) and tuple(item['lq'].shape) == (3, 168, 168)


def stamps(root):
    files = [os.path.join(folder, f) for folder, _, fs in os.walk(root) for f in fs]
    return {path: os.stat(path).st_mtime_ns for path in files}


def test_idempotent_unless_forced_or_incomplete(tmp_path, capsys):
    root = str(tmp_path / 'demo')
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1)
    for path in stamps(root):  # age the files, so a rewrite shows even with coarse file-system timestamps
        os.utime(path, ns=(10**18, 10**18))
    before = stamps(root)
    assert len(before) == 4 and set(before.values()) == {10**18}
    capsys.readouterr()
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1)
    assert 'already complete' in capsys.readouterr().out
    assert stamps(root) == before
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1, force=True)
    after = stamps(root)
    assert after.keys() == before.keys() and all(after[path] != before[path] for path in before)
    # an incomplete set (a missing LR file, a stray file) is rebuilt to exactly the expected files
    os.remove(os.path.join(root, 'val', 'LR_bicubic', 'X2', 'chelsea.png'))
    open(os.path.join(root, 'train', 'HR', 'stray.png'), 'w').close()
    build_demo_set(root, scales=(2, ), num_train=1, num_val=1)
    assert stamps(root).keys() == before.keys()


@pytest.mark.parametrize('kwargs, message', [
    ({'scales': (2, 5)}, r'unknown scale\(s\) \[5\]: choose from \[2, 3, 4\]'),
    ({'num_train': 10, 'num_val': 4}, r'num_train \+ num_val = 14, but only 12 images'),
    ({'num_val': 0}, r'num_val must be a positive integer, got 0'),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_demo_set(str(tmp_path / 'demo'), **kwargs)
    assert not os.path.exists(tmp_path / 'demo')  # refused before anything is written


def test_cli_reports_bad_scale_as_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['make_demo_sr.py', '--root', str(tmp_path), '--scales', '8'])
    with pytest.raises(SystemExit) as exit_info:
        make_demo_sr.main()
    assert exit_info.value.code == 2
    assert 'unknown scale(s) [8]' in capsys.readouterr().err
