"""datasets_prep.prepare_gopro (GoPro + HIDE), prepare_rain13k and prepare_sidd on tiny synthetic archives in the real
layouts: flat names, pairing, crop positions, .mat blocks, idempotence, errors naming the folder."""
import filecmp
import os

import numpy as np
import pytest
import scipy.io

from datasets_prep import prepare_gopro, prepare_rain13k, prepare_sidd
from test_datasets_prep import age, fails, listing, read, stamps, write_images

# 40x52 images in 16x16 crops every 8 pixels: rows 0..24 fit exactly, columns 0..32 leave 4 pixels: a last one at 36
ROWS, COLS = [0, 8, 16, 24], [0, 8, 16, 24, 32, 36]


def crops_of(img):
    return [img[y:y + 16, x:x + 16] for y in ROWS for x in COLS]


@pytest.fixture
def gopro(tmp_path):
    """GOPRO_Large with two training sequences and one test sequence; {flat name: (blur, sharp)} of the training set."""
    root = str(tmp_path / 'GOPRO_Large')
    train = {}
    for seed, sequence in enumerate(('GOPR0372_07_00', 'GOPR0374_11_01')):
        frames = ['000047.png', '000048.png']
        blur = write_images(os.path.join(root, 'train', sequence, 'blur'), frames, seed=seed)
        sharp = write_images(os.path.join(root, 'train', sequence, 'sharp'), frames, seed=seed + 10)
        write_images(os.path.join(root, 'train', sequence, 'blur_gamma'), frames, seed=seed + 20)
        train.update({f'{sequence}_{frame}': (blur[frame], sharp[frame]) for frame in frames})
    for kind in ('blur', 'sharp'):
        write_images(os.path.join(root, 'test', 'GOPR0384_11_00', kind), ['000001.png'], seed=30)
    return root, train


def test_gopro_flat_pairs_and_crops(gopro, tmp_path):
    root, train = gopro
    out = str(tmp_path / 'GoPro')
    prepare_gopro.main(['--gopro', root, '--out', out, '--crops', '--crop-size', '16', '--step', '8',
                        '--expect-counts', 'off', '--workers', '2'])
    assert listing(out) == ['test', 'train']
    assert listing(os.path.join(out, 'train')) == ['input', 'input_crops', 'target', 'target_crops']
    for kind, index in (('input', 0), ('target', 1)):
        assert listing(os.path.join(out, 'train', kind)) == sorted(train)
        for name, images in train.items():
            assert np.array_equal(read(os.path.join(out, 'train', kind, name)), images[index])
        assert listing(os.path.join(out, 'test', kind)) == ['GOPR0384_11_00_000001.png']
    source = os.path.join(root, 'train', 'GOPR0372_07_00', 'sharp', '000048.png')
    assert filecmp.cmp(source, os.path.join(out, 'train', 'target', 'GOPR0372_07_00_000048.png'), shallow=False)
    for kind, index in (('input_crops', 0), ('target_crops', 1)):
        names = [f'{name[:-4]}_s{i:03d}.png' for name in sorted(train) for i in range(1, 25)]
        assert listing(os.path.join(out, 'train', kind)) == names
        expected = crops_of(train['GOPR0374_11_01_000047.png'][index])
        for i, crop in enumerate(expected, 1):
            assert np.array_equal(read(os.path.join(out, 'train', kind, f'GOPR0374_11_01_000047_s{i:03d}.png')), crop)
    last = read(os.path.join(out, 'train', 'input_crops', 'GOPR0372_07_00_000047_s024.png'))
    assert np.array_equal(last, train['GOPR0372_07_00_000047.png'][0][24:40, 36:52])  # the bottom-right corner
    before = age(out)
    prepare_gopro.main(['--gopro', root, '--out', out, '--crops', '--crop-size', '16', '--step', '8',
                        '--expect-counts', 'off'])
    assert stamps(out) == before


def test_gopro_errors_name_the_folder(gopro, tmp_path, capsys):
    root, _ = gopro
    out = str(tmp_path / 'GoPro')
    output = fails(prepare_gopro.main, ['--gopro', root, '--out', out], capsys)
    assert f'{root}/train: found 4 images (pairs), but the official GoPro_train has 2,103' in output
    os.remove(os.path.join(root, 'train', 'GOPR0374_11_01', 'sharp', '000048.png'))
    output = fails(prepare_gopro.main, ['--gopro', root, '--out', out, '--expect-counts', 'off'], capsys)
    assert (f"{root}/train/<sequence>/blur vs sharp: 1 inputs without a target ['GOPR0374_11_01_000048.png'], "
            '0 targets without an input []') in output
    prepare_gopro.main(['--gopro', root, '--out', out, '--expect-counts', 'off', '--drop-unpaired'])
    assert len(listing(os.path.join(out, 'train', 'input'))) == 3
    os.rename(os.path.join(root, 'test', 'GOPR0384_11_00', 'sharp'), os.path.join(root, 'test', 'GOPR0384_11_00', 'x'))
    before = age(out)
    output = fails(prepare_gopro.main, ['--gopro', root, '--out', out, '--expect-counts', 'off', '--drop-unpaired'],
                   capsys)
    assert f'{root}/test/GOPR0384_11_00/sharp: no such folder' in output
    assert stamps(out) == before  # nothing written when a layout is wrong
    assert 'give --gopro and/or --hide' in fails(prepare_gopro.main, [], capsys)


def test_hide_pairs_blurred_test_images_with_gt(tmp_path, capsys):
    root, out = str(tmp_path / 'HIDE_dataset'), str(tmp_path / 'HIDE')
    blurred = write_images(os.path.join(root, 'test', 'test-close-ups'), ['1fromGOPR0950.png', '9fromGOPR1072.png'])
    blurred.update(write_images(os.path.join(root, 'test', 'test-long-shot'), ['3fromGOPR0995.png'], seed=1))
    gt = write_images(os.path.join(root, 'GT'), sorted(blurred) + ['train_only.png'], seed=2)
    write_images(os.path.join(root, 'train'), ['train_only.png'], seed=3)
    prepare_gopro.main(['--hide', root, '--hide-out', out, '--expect-counts', 'off'])
    assert listing(out) == ['test'] and listing(os.path.join(out, 'test')) == ['input', 'target']
    for kind, images in (('input', blurred), ('target', gt)):
        assert listing(os.path.join(out, 'test', kind)) == sorted(blurred)
        for name in blurred:
            assert np.array_equal(read(os.path.join(out, 'test', kind, name)), images[name])
    output = fails(prepare_gopro.main, ['--hide', root, '--hide-out', out], capsys)
    assert f'{root}/test: found 3 images (pairs), but the official HIDE has 2,025' in output
    os.remove(os.path.join(root, 'GT', '3fromGOPR0995.png'))
    output = fails(prepare_gopro.main, ['--hide', root, '--hide-out', out, '--expect-counts', 'off'], capsys)
    assert f"{root}/test vs {root}/GT: 1 inputs without a target ['3fromGOPR0995.png']" in output


def test_rain13k_layout_pairing_and_counts(tmp_path, capsys):
    src, out = str(tmp_path / 'Datasets'), str(tmp_path / 'Rain13K')
    sets = {'Rain13K': os.path.join(src, 'train', 'Rain13K')}
    sets.update({name: os.path.join(src, 'test', name) for name in prepare_rain13k.SETS[1:]})
    for seed, folder in enumerate(sets.values()):
        for kind in ('input', 'target'):
            write_images(os.path.join(folder, kind), ['1.png', '2.png'], seed=seed, shape=(12, 16))
    prepare_rain13k.main(['--src', src, '--out', out, '--expect-counts', 'off'])
    assert listing(out) == ['test', 'train']
    assert listing(os.path.join(out, 'test')) == ['Rain100H', 'Rain100L', 'Test100', 'Test1200', 'Test2800']
    for name, folder in sets.items():
        target = os.path.join(out, 'train') if name == 'Rain13K' else os.path.join(out, 'test', name)
        for kind in ('input', 'target'):
            assert listing(os.path.join(target, kind)) == ['1.png', '2.png']
            assert filecmp.cmp(os.path.join(folder, kind, '2.png'), os.path.join(target, kind, '2.png'), shallow=False)
    before = age(out)
    prepare_rain13k.main(['--src', src, '--out', out, '--expect-counts', 'off'])
    assert stamps(out) == before

    output = fails(prepare_rain13k.main, ['--src', src, '--out', out, '--sets', 'Test100'], capsys)
    assert f'{src}/test/Test100: found 2 images (pairs), but the official Test100 has 100 or 98' in output
    write_images(os.path.join(sets['Test2800'], 'input'), ['926_10(1).jpg'])
    output = fails(prepare_rain13k.main, ['--src', src, '--out', out, '--expect-counts', 'off'], capsys)
    assert f"{src}/test/Test2800: input vs target: 1 inputs without a target ['926_10(1).jpg']" in output
    assert not os.path.exists(os.path.join(out, 'test', 'Test2800', 'input', '926_10(1).jpg'))
    output = fails(prepare_rain13k.main, ['--src', str(tmp_path), '--sets', 'Rain100L', '--out', out], capsys)
    assert f'{tmp_path}/test/Rain100L/input: no such folder' in output


@pytest.fixture
def sidd(tmp_path):
    """SIDD_Medium_Srgb/Data with two scene instances of two captures each, and the two validation .mat files."""
    src = str(tmp_path / 'SIDD_Medium_Srgb')
    pairs = {}
    for seed, scene in enumerate(('0001_001_S6_00100_00060_3200_L', '0002_001_S6_00100_00020_3200_N')):
        number = scene[:4]
        for capture in ('010', '011'):
            noisy = write_images(os.path.join(src, 'Data', scene), [f'{number}_NOISY_SRGB_{capture}.PNG'], seed=seed)
            gt = write_images(os.path.join(src, 'Data', scene), [f'{number}_GT_SRGB_{capture}.PNG'], seed=seed + 5)
            pairs[f'{number}_{capture}'] = (*noisy.values(), *gt.values())
    rng = np.random.default_rng(0)
    blocks = {key: rng.integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8) for key in prepare_sidd.VAL_KEYS.values()}
    val = str(tmp_path / 'val')
    os.makedirs(val)
    for key, array in blocks.items():
        scipy.io.savemat(os.path.join(val, f'{key}.mat'), {key: array})
    return src, val, pairs, blocks


def test_sidd_crops_and_validation_blocks(sidd, tmp_path):
    src, val, pairs, blocks = sidd
    out = str(tmp_path / 'SIDD')
    args = ['--src', src, '--val', val, '--out', out, '--crop-size', '16', '--step', '8', '--expect-counts', 'off']
    prepare_sidd.main(args)
    assert listing(out) == ['train', 'val'] and listing(os.path.join(out, 'train')) == ['input_crops', 'target_crops']
    for kind, index in (('input_crops', 0), ('target_crops', 1)):
        assert listing(os.path.join(out, 'train', kind)) == [f'{n}_s{i:03d}.png' for n in sorted(pairs)
                                                             for i in range(1, 25)]
        for i, crop in enumerate(crops_of(pairs['0002_011'][index]), 1):
            assert np.array_equal(read(os.path.join(out, 'train', kind, f'0002_011_s{i:03d}.png')), crop)
    names = [f'{b:04d}_{p:02d}.png' for b in (1, 2) for p in (1, 2, 3)]
    for kind, key in (('input', 'ValidationNoisyBlocksSrgb'), ('target', 'ValidationGtBlocksSrgb')):
        assert listing(os.path.join(out, 'val', kind)) == names
        assert np.array_equal(read(os.path.join(out, 'val', kind, '0002_03.png'))[..., ::-1], blocks[key][1, 2])  # RGB
        assert np.array_equal(read(os.path.join(out, 'val', kind, '0001_02.png'))[..., ::-1], blocks[key][0, 1])
    before = age(out)
    prepare_sidd.main(args)
    assert stamps(out) == before


def test_sidd_errors_name_the_file(sidd, tmp_path, capsys):
    src, val, _, blocks = sidd
    out = str(tmp_path / 'SIDD')
    output = fails(prepare_sidd.main, ['--val', val, '--out', out], capsys)
    assert f'{val}/ValidationNoisyBlocksSrgb.mat: found 6 images (pairs), but the official SIDD_val has 1,280' in output
    output = fails(prepare_sidd.main, ['--src', src, '--out', out, '--crop-size', '16'], capsys)
    assert f'{src}/Data: found 4 images (pairs), but the official SIDD_train has 320' in output
    scipy.io.savemat(os.path.join(val, 'ValidationGtBlocksSrgb.mat'), {'gt': blocks['ValidationGtBlocksSrgb']})
    output = fails(prepare_sidd.main, ['--val', val, '--out', out, '--expect-counts', 'off'], capsys)
    assert f"{val}/ValidationGtBlocksSrgb.mat: no array ValidationGtBlocksSrgb (it holds ['gt'])" in output
    os.remove(os.path.join(src, 'Data', '0001_001_S6_00100_00060_3200_L', '0001_GT_SRGB_011.PNG'))
    output = fails(prepare_sidd.main, ['--src', src, '--out', out, '--expect-counts', 'off'], capsys)
    assert f"{src}/Data/<scene>: NOISY vs GT: 1 inputs without a target ['0001_011.png']" in output
