"""datasets_prep/make_demo_restoration.py: layout, the clean targets, the noise's statistics, determinism, tiles,
rebuilds and errors."""
import json
import os
import sys

import cv2
import numpy as np
import pytest

import skimage.data
from basicsr.data.paired_image_dataset import PairedImageDataset
from datasets_prep import make_demo_restoration
from datasets_prep.make_demo_restoration import build_demo_restoration_set

NUM_TRAIN, NUM_VAL = 1, 1  # motorcycle (492x732) | chelsea (300x444)
TILE = 160


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


def pair(root, split, name):
    return [read_rgb(os.path.join(root, split, sub, f'{name}.png')) for sub in ('input', 'target')]


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo_restoration'))
    return root, build_demo_restoration_set(root, sigma=25, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL,
                                            tile_size=TILE)


def test_layout_and_clean_targets(demo):
    root, names = demo
    assert names['train'] == ['motorcycle'] and names['val'] == ['chelsea']
    assert sorted(os.listdir(root)) == ['noise.json', 'train', f'train_tiles{TILE}', 'val']
    for split in ('train', 'val'):
        for sub in ('input', 'target'):
            assert os.listdir(os.path.join(root, split, sub)) == [f'{names[split][0]}.png']
    with open(os.path.join(root, 'noise.json')) as f:
        assert json.load(f) == {'sigma': 25.0, 'seed': 0}
    # the SR demo's HR images: the bundled photographs, centre-cropped to multiples of 12 (colour order kept)
    assert np.array_equal(pair(root, 'val', 'chelsea')[1], skimage.data.chelsea()[:, 3:447])
    assert np.array_equal(pair(root, 'train', 'motorcycle')[1], skimage.data.stereo_motorcycle()[0][4:496, 4:736])


@pytest.mark.parametrize('sigma', [10, 25])
def test_noise_is_white_gaussian_of_sigma(tmp_path, sigma):
    """On pixels far from 0 and 255 (no clipping), noisy - clean has mean 0, the variance sigma^2 plus rounding's
    1/12, Gaussian tails, and no correlation between channels or neighbours; at 0 and 255 the noise is clipped."""
    root = str(tmp_path)
    build_demo_restoration_set(root, sigma=sigma, seed=3, num_train=1, num_val=1, tile_size=TILE)
    noisy, clean = (image.astype(np.float64) for image in pair(root, 'train', 'motorcycle'))
    residual = noisy - clean
    inside = (clean > 4 * sigma) & (clean < 255 - 4 * sigma)
    r = residual[inside]
    assert r.size > 100_000
    assert abs(r.mean()) < 0.05 * sigma
    assert abs(r.var() - (sigma**2 + 1 / 12)) < 0.02 * sigma**2
    assert abs(np.mean(np.abs(r) > 2 * sigma) - 0.0455) < 0.005  # P(|z| > 2) of a normal
    assert np.all(r == np.round(r))  # rounded to grey levels
    rows = np.all(inside, axis=2)  # pixels whose three channels are unclipped
    across = residual[..., 0][rows], residual[..., 1][rows]  # two channels of one pixel
    keep = rows[:, :-1] & rows[:, 1:]
    along = residual[:, :-1, 0][keep], residual[:, 1:, 0][keep]  # horizontal neighbours
    for x, y in (across, along):
        assert abs(np.corrcoef(x, y)[0, 1]) < 0.02
    # clipped, not wrapped: on black, noisy = max(round(n), 0), whose mean is sigma / sqrt(2 pi); on white, mirrored
    flat = np.zeros((200, 200, 3), np.uint8)
    for value, sign in ((0, 1), (255, -1)):
        noisy = make_demo_restoration.add_noise(flat + value, sigma, 3, 'flat').astype(np.float64)
        assert abs(sign * (noisy - value).mean() / (sigma / np.sqrt(2 * np.pi)) - 1) < 0.03


def test_deterministic_and_seeded(demo, tmp_path):
    root, _ = demo
    again = str(tmp_path / 'again')
    build_demo_restoration_set(again, sigma=25, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL, tile_size=TILE)
    for split, name in (('train', 'motorcycle'), ('val', 'chelsea')):
        for sub in ('input', 'target'):
            with open(os.path.join(root, split, sub, f'{name}.png'), 'rb') as a, \
                    open(os.path.join(again, split, sub, f'{name}.png'), 'rb') as b:
                assert a.read() == b.read()
    other = str(tmp_path / 'other')
    build_demo_restoration_set(other, sigma=25, seed=1, num_train=NUM_TRAIN, num_val=NUM_VAL, tile_size=TILE)
    first, second = pair(root, 'val', 'chelsea'), pair(other, 'val', 'chelsea')
    assert np.array_equal(first[1], second[1]) and np.mean(first[0] != second[0]) > 0.9
    # an image's noise depends on its name and the seed only, not on the split sizes
    larger = str(tmp_path / 'larger')
    build_demo_restoration_set(larger, sigma=25, seed=0, num_train=2, num_val=1, tile_size=TILE)
    assert np.array_equal(pair(larger, 'train', 'motorcycle')[0], pair(root, 'train', 'motorcycle')[0])


def test_tiles_are_the_crops_of_the_pair(demo):
    root, names = demo
    noisy, clean = pair(root, 'train', 'motorcycle')  # 492x732: rows at 0, 160, 320, 332; columns 0 ... 480, 572
    tiles = {sub: os.path.join(root, f'train_tiles{TILE}', sub) for sub in ('input', 'target')}
    assert len(names['tiles']) == 4 * 5 and sorted(os.listdir(tiles['input'])) == sorted(names['tiles'])
    assert sorted(os.listdir(tiles['target'])) == sorted(names['tiles'])
    starts = [(y, x) for y in (0, 160, 320, 332) for x in (0, 160, 320, 480, 572)]
    assert names['tiles'][:2] == ['motorcycle_s001.png', 'motorcycle_s002.png']
    for index in (0, 4, 7, 19):
        y, x = starts[index]
        name = f'motorcycle_s{index + 1:03d}.png'
        assert np.array_equal(read_rgb(os.path.join(tiles['input'], name)), noisy[y:y + TILE, x:x + TILE])
        assert np.array_equal(read_rgb(os.path.join(tiles['target'], name)), clean[y:y + TILE, x:x + TILE])
    dataset = PairedImageDataset({'dataroot_gt': tiles['target'], 'dataroot_lq': tiles['input'], 'filename_tmpl': '{}',
                                  'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 1})
    assert len(dataset) == 20
    item = dataset[0]  # BasicSR pairs the tiles by name
    assert os.path.basename(item['lq_path']) == os.path.basename(item['gt_path'])


def stamps(root):
    return {os.path.join(folder, f): os.stat(os.path.join(folder, f)).st_mtime_ns
            for folder, _, files in os.walk(root) for f in files}


def test_kept_unless_forced_or_the_noise_differs(tmp_path, capsys):
    root = str(tmp_path / 'set')
    build_demo_restoration_set(root, sigma=25, seed=0, num_train=1, num_val=1, tile_size=TILE)
    for path in stamps(root):  # aged, so a rewrite shows even with coarse time stamps
        os.utime(path, ns=(10**18, 10**18))
    before = stamps(root)
    capsys.readouterr()
    build_demo_restoration_set(root, sigma=25, seed=0, num_train=1, num_val=1, tile_size=TILE)
    assert 'already complete' in capsys.readouterr().out and stamps(root) == before
    noisy = pair(root, 'val', 'chelsea')[0]
    build_demo_restoration_set(root, sigma=25, seed=1, num_train=1, num_val=1, tile_size=TILE)  # another seed
    after = stamps(root)
    assert after.keys() == before.keys() and all(after[path] != before[path] for path in before)
    assert not np.array_equal(pair(root, 'val', 'chelsea')[0], noisy)
    tile = os.path.join(root, f'train_tiles{TILE}', 'input', 'motorcycle_s001.png')
    assert np.array_equal(read_rgb(tile), pair(root, 'train', 'motorcycle')[0][:TILE, :TILE])  # tiles cut anew


@pytest.mark.parametrize('kwargs, message', [
    ({'sigma': 0}, r'sigma must be a positive number of grey levels, got 0'),
    ({'seed': -1}, r'seed must be a non-negative integer, got -1'),
    ({'tile_size': 4}, r'tile_size must be an integer of at least 8, got 4'),
    ({'num_train': 10, 'num_val': 4}, r'num_train \+ num_val = 14, but only 12 images'),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_demo_restoration_set(str(tmp_path / 'set'), **kwargs)
    assert not os.path.exists(tmp_path / 'set')


def test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['make_demo_restoration', '--root', str(tmp_path), '--sigma', '-5'])
    with pytest.raises(SystemExit) as exit_info:
        make_demo_restoration.main()
    assert exit_info.value.code == 2 and 'sigma must be a positive number' in capsys.readouterr().err
