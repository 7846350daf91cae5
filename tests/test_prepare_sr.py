"""datasets_prep.prepare_div2k and prepare_sr_benchmarks on tiny synthetic archives: layout, counts, sizes, sub-image
positions, LR = MATLAB bicubic of the cropped HR, meta info, idempotence, errors naming the folder."""
import os

import numpy as np
import pytest

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.matlab_functions import imresize
from datasets_prep import prepare_div2k, prepare_sr_benchmarks
from test_datasets_prep import age, fails, listing, read, stamps, write_images

SCALES = (2, 3, 4)
NAMES = ('0001', '0002', '0003')
# 62x87 HR, cropped to 60x84 (multiples of 12); 24x24 sub-images every 24 pixels
ROWS, COLS = [0, 24, 36], [0, 24, 48, 60]  # the last row and column are flush with the edge (12 pixels left over)


def bicubic(hr, scale):
    """MATLAB-style bicubic downscaling rounded to uint8, computed here directly with BasicSR's imresize."""
    return np.clip(np.round(imresize(hr / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)


@pytest.fixture
def div2k(tmp_path):
    """DIV2K_train_HR with 3 images and official-style LR images (random, so that they differ from any bicubic)."""
    root = str(tmp_path / 'DIV2K')
    hr = write_images(os.path.join(root, 'DIV2K_train_HR'), [f'{n}.png' for n in NAMES], shape=(62, 87))
    lr = {}
    for scale in SCALES:
        folder = os.path.join(root, 'DIV2K_train_LR_bicubic', f'X{scale}')
        images = write_images(folder, [f'{n}x{scale}.png' for n in NAMES], seed=scale, shape=(62 // scale, 87 // scale))
        lr[scale] = {name[:-len(f'x{scale}.png')]: img for name, img in images.items()}
    return root, {name[:-4]: img for name, img in hr.items()}, lr


def run_div2k(root, *extra):
    prepare_div2k.main(['--root', root, '--crop-size', '24', '--step', '24', '--expect-counts', 'off', '--workers', '1',
                        *extra])


def test_div2k_sub_images_positions_pairing_and_meta_info(div2k):
    root, hr, lr = div2k
    run_div2k(root, '--workers', '2')
    expected = [f'{n}_s{i:03d}.png' for n in NAMES for i in range(1, 13)]
    assert listing(os.path.join(root, 'DIV2K_train_HR_sub')) == expected
    for name in NAMES:
        for index, (y, x) in enumerate([(y, x) for y in ROWS for x in COLS], 1):
            sub = f'{name}_s{index:03d}.png'
            assert np.array_equal(read(os.path.join(root, 'DIV2K_train_HR_sub', sub)), hr[name][y:y + 24, x:x + 24])
            for s in SCALES:
                lr_sub = read(os.path.join(root, 'DIV2K_train_LR_bicubic', f'X{s}_sub', sub))
                assert np.array_equal(lr_sub, lr[s][name][y // s:(y + 24) // s, x // s:(x + 24) // s]), (sub, s)
    last = read(os.path.join(root, 'DIV2K_train_HR_sub', '0001_s012.png'))
    assert np.array_equal(last, hr['0001'][36:60, 60:84])  # reaches the edge of the 60x84 crop
    with open(os.path.join(root, 'meta_info_DIV2K800sub_GT.txt')) as f:
        assert f.read().splitlines() == [f'{sub} (24,24,3)' for sub in expected]
    assert sorted(os.listdir(root)) == ['DIV2K_train_HR', 'DIV2K_train_HR_sub', 'DIV2K_train_LR_bicubic',
                                        'meta_info_DIV2K800sub_GT.txt']
    # BasicSR reads the result through the meta info file
    dataset = PairedImageDataset({'dataroot_gt': os.path.join(root, 'DIV2K_train_HR_sub'), 'phase': 'val', 'scale': 3,
                                  'dataroot_lq': os.path.join(root, 'DIV2K_train_LR_bicubic', 'X3_sub'),
                                  'meta_info_file': os.path.join(root, 'meta_info_DIV2K800sub_GT.txt'),
                                  'io_backend': {'type': 'disk'}})
    assert len(dataset) == 36 and tuple(dataset[5]['lq'].shape) == (3, 8, 8)


def test_div2k_threshold_drops_small_leftovers(div2k):
    root, hr, _ = div2k
    run_div2k(root, '--thresh-size', '12', '--scales', '4')  # 60x84: 12 pixels left over on both sides
    assert len(listing(os.path.join(root, 'DIV2K_train_HR_sub'))) == 3 * 2 * 3  # rows [0, 24], columns [0, 24, 48]
    assert np.array_equal(read(os.path.join(root, 'DIV2K_train_HR_sub', '0002_s006.png')), hr['0002'][24:48, 48:72])


def test_div2k_generated_lr_is_bicubic_of_the_cropped_hr(div2k):
    root, hr, _ = div2k
    run_div2k(root, '--generate-lr')
    for s in SCALES:
        lr = bicubic(hr['0003'][:60, :84], s)
        assert lr.shape == (60 // s, 84 // s, 3)
        for index, (y, x) in enumerate([(y, x) for y in ROWS for x in COLS], 1):
            sub = read(os.path.join(root, 'DIV2K_train_LR_bicubic', f'X{s}_sub', f'0003_s{index:03d}.png'))
            assert np.array_equal(sub, lr[y // s:(y + 24) // s, x // s:(x + 24) // s]), (s, index)


def test_div2k_rerun_writes_only_what_is_missing(div2k, capsys):
    root, _, _ = div2k
    run_div2k(root)
    before = age(root)
    run_div2k(root)
    assert stamps(root) == before
    removed = os.path.join(root, 'DIV2K_train_LR_bicubic', 'X4_sub', '0002_s007.png')
    os.remove(removed)
    run_div2k(root)
    after = stamps(root)
    assert after.keys() == before.keys() and [p for p in after if after[p] != before[p]] == [removed]


def test_div2k_errors_name_the_folder(div2k, capsys):
    root, _, _ = div2k
    output = fails(prepare_div2k.main, ['--root', root], capsys)  # official count by default
    assert f'{root}/DIV2K_train_HR: found 3 images (pairs), but the official DIV2K_train has 800' in output
    os.remove(os.path.join(root, 'DIV2K_train_LR_bicubic', 'X3', '0002x3.png'))
    output = fails(prepare_div2k.main, ['--root', root, '--expect-counts', 'off'], capsys)
    assert f"{root}/DIV2K_train_LR_bicubic/X3: 1 LR images of {root}/DIV2K_train_HR are missing, e.g. ['0002x3.png']" \
        in output
    output = fails(prepare_div2k.main, ['--root', root, '--splits', 'valid'], capsys)
    assert f'{root}/DIV2K_valid_HR: no such folder' in output
    output = fails(prepare_div2k.main, ['--root', root, '--crop-size', '20'], capsys)
    assert '--crop-size 20 must be divisible by every scale [2, 3, 4]' in output
    write_images(os.path.join(root, 'DIV2K_train_LR_bicubic', 'X3'), ['0002x3.png'], shape=(10, 29))
    output = fails(prepare_div2k.main, ['--root', root, '--expect-counts', 'off'], capsys)
    assert f'{root}/DIV2K_train_HR/0001.png: a side of 60 pixels is smaller than the crop size 480' in output
    output = fails(prepare_div2k.main, ['--root', root, '--crop-size', '24', '--expect-counts', 'off'], capsys)
    assert '0002x3.png: 10x29 pixels, but its HR image' in output and '(62x87) at x3 needs 20x28' in output


# ------------------------------------------------------------------ SR benchmarks


@pytest.fixture
def benchmark_src(tmp_path):
    """Set5 in EDSR's layout (<Set>/HR) with images of several sizes and formats; B100 as BSD100/*.png."""
    src = str(tmp_path / 'src')
    hr = write_images(os.path.join(src, 'Set5', 'HR'), ['baby.png', 'bird.bmp'], shape=(40, 53))
    hr.update(write_images(os.path.join(src, 'Set5', 'HR'), ['head.png'], seed=1, shape=(37, 50)))
    write_images(os.path.join(src, 'Set5', 'LR_bicubic', 'X2'), ['babyx2.png'], shape=(20, 26))  # EDSR's own LR
    hr.update(write_images(os.path.join(src, 'BSD100'), ['3096.png'], seed=2, shape=(31, 25)))
    return src, hr


def test_benchmarks_hr_crop_lr_bicubic_and_names(benchmark_src, tmp_path):
    src, hr = benchmark_src
    out = str(tmp_path / 'benchmark')
    prepare_sr_benchmarks.main(['--src', src, '--out', out, '--sets', 'Set5', 'B100', '--expect-counts', 'off'])
    assert listing(out) == ['B100', 'Set5']
    crops = {'baby': hr['baby.png'][:36, :48], 'bird': hr['bird.bmp'][:36, :48], 'head': hr['head.png'][:36, :48],
             '3096': hr['3096.png'][:24, :24]}  # top-left crop to multiples of 12
    for name, folder in (('Set5', ['baby', 'bird', 'head']), ('B100', ['3096'])):
        files = [f'{stem}.png' for stem in folder]
        assert listing(os.path.join(out, name, 'HR')) == files
        assert listing(os.path.join(out, name, 'LR_bicubic')) == ['X2', 'X3', 'X4']
        for stem in folder:
            assert np.array_equal(read(os.path.join(out, name, 'HR', f'{stem}.png')), crops[stem])
            for s in SCALES:
                assert listing(os.path.join(out, name, 'LR_bicubic', f'X{s}')) == files
                lr = read(os.path.join(out, name, 'LR_bicubic', f'X{s}', f'{stem}.png'))
                assert np.array_equal(lr, bicubic(crops[stem], s)), (stem, s)


def test_benchmarks_scale_subset_idempotence_and_errors(benchmark_src, tmp_path, capsys):
    src, hr = benchmark_src
    out = str(tmp_path / 'benchmark')
    args = ['--src', src, '--out', out, '--sets', 'Set5', '--scales', '4', '--expect-counts', 'off']
    prepare_sr_benchmarks.main(args)
    assert read(os.path.join(out, 'Set5', 'HR', 'head.png')).shape == (36, 48, 3)  # a multiple of 4 only
    before = age(out)
    prepare_sr_benchmarks.main(args)
    assert stamps(out) == before
    output = fails(prepare_sr_benchmarks.main, ['--src', src, '--out', out, '--sets', 'Set5'], capsys)
    assert f'{src}/Set5/HR: found 3 images (pairs), but the official Set5 has 5' in output
    output = fails(prepare_sr_benchmarks.main, ['--src', src, '--out', out, '--sets', 'Urban100'], capsys)
    assert f"Urban100: no HR images in any of ['{src}/Urban100/HR', '{src}/Urban100/']" in output
    output = fails(prepare_sr_benchmarks.main, ['--src', src, '--out', src], capsys)
    assert f'--src and --out are both {src}' in output
