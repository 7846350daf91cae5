"""datasets_prep: shared helpers (grids, counts, pairing, writes), make_lmdb round trip, check_data, --help of every
script. The preparation scripts are tested in test_prepare_sr.py and test_prepare_restoration.py with helpers from
here."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

import basicsr_kd  # noqa: F401  (makes BasicSR 1.4.2 importable)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils import FileClient, imfrombytes
from datasets_prep import check_data, common, make_lmdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ('prepare_div2k', 'prepare_sr_benchmarks', 'prepare_gopro', 'prepare_rain13k', 'prepare_sidd', 'make_lmdb',
           'check_data')


def write_images(folder, names, seed=0, shape=(40, 52)):
    """Random 8-bit BGR images written with OpenCV; returns {name: array}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    images = {}
    for name in names:
        images[name] = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        assert cv2.imwrite(os.path.join(folder, name), images[name])
    return images


def read(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


def listing(folder):
    return sorted(os.listdir(folder))


def stamps(root):
    """{path: mtime} of every file below ``root``."""
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


def age(root):
    """Set every file's time stamp far into the past, so a rewrite shows even on coarse file-system clocks."""
    for path in stamps(root):
        os.utime(path, ns=(10**9, 10**9))
    return stamps(root)


def fails(main, argv, capsys):
    """Run a script's ``main(argv)`` expecting exit code 1; returns what it printed (stdout, then stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.mark.parametrize('length, size, step, thresh, starts', [
    (60, 24, 24, 0, [0, 24, 36]),  # 12 pixels left over: a last tile flush with the edge
    (60, 24, 24, 12, [0, 24]),  # ... unless they are not more than the threshold
    (84, 24, 24, 0, [0, 24, 48, 60]),
    (48, 24, 12, 0, [0, 12, 24]),  # exact fit: no extra tile
    (720, 512, 256, 0, [0, 208]),  # GoPro 1280x720 frames in Restormer's 512 / overlap 256 patches
    (1280, 512, 256, 0, [0, 256, 512, 768]),
    (1356, 480, 240, 0, [0, 240, 480, 720, 876]),  # DIV2K 0001 (2040x1356): 5 x 8 = 40 sub-images in BasicSR's meta
    (2040, 480, 240, 0, [0, 240, 480, 720, 960, 1200, 1440, 1560]),  # info, as listed there for 0001
])
def test_tile_starts(length, size, step, thresh, starts):
    assert common.tile_starts(length, size, step, thresh, 'x.png') == starts


def test_tile_starts_refuses_small_images():
    with pytest.raises(ValueError, match=r'x\.png: a side of 20 pixels is smaller than the crop size 24'):
        common.tile_starts(20, 24, 12, 0, 'x.png')


def test_check_count_names_folder_and_official_count():
    common.check_count(800, 'DIV2K_train', 'some/folder')
    common.check_count(98, 'Test100', 'some/folder')  # the download's count is accepted too
    common.check_count(3, 'DIV2K_train', 'some/folder', expect=False)
    with pytest.raises(ValueError, match=r'some/folder: found 3 images \(pairs\), but the official DIV2K_train has '
                                         r'800; an incomplete download or a wrong folder\?'):
        common.check_count(3, 'DIV2K_train', 'some/folder')
    with pytest.raises(ValueError, match=r'official Rain13K has 13,712 or 13,711.*--expect-counts off'):
        common.check_count(13000, 'Rain13K', 'x')


def test_pair_files_reports_both_sides(capsys):
    inputs = {n: f'in/{n}' for n in ('a.png', 'b.png', 'c.png')}
    targets = {n: f'tg/{n}' for n in ('a.png', 'c.png', 'd.png')}
    with pytest.raises(ValueError, match=r"where: 1 inputs without a target \['b.png'\], 1 targets without an input "
                       r"\['d.png'\]"):
        common.pair_files(inputs, targets, 'where')
    kept = [('a.png', 'in/a.png', 'tg/a.png'), ('c.png', 'in/c.png', 'tg/c.png')]
    assert common.pair_files(inputs, targets, 'where', drop_unpaired=True) == kept
    assert 'Left out, where: 1 inputs' in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"1 inputs without a target \['b.png'\], 0 targets"):
        common.pair_files(inputs, targets, 'where', extra_targets=True)


def test_list_images_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'{tmp_path / "nope"}: no such folder'):
        common.list_images(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('x')
    with pytest.raises(ValueError, match='empty: the folder holds no images'):
        common.list_images(str(tmp_path / 'empty'))


def test_writes_are_atomic_and_text_is_left_alone_when_equal(tmp_path):
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    common.write_image(str(tmp_path / 'sub' / 'a.png'), img[:, 2:])  # a non-contiguous view
    assert listing(tmp_path / 'sub') == ['a.png'] and np.array_equal(read(tmp_path / 'sub' / 'a.png'), img[:, 2:])
    path = str(tmp_path / 'meta.txt')
    assert common.write_text(path, 'a\n') and not common.write_text(path, 'a\n')
    assert common.write_text(path, 'b\n') and open(path).read() == 'b\n'
    assert listing(tmp_path) == ['meta.txt', 'sub']


def test_parallel_map_keeps_order_in_processes():
    assert common.parallel_map(abs, [-3, 1, -2, 5], workers=2) == [3, 1, 2, 5]
    assert common.parallel_map(abs, [-1], workers=4) == [1]


# ------------------------------------------------------------------ LMDB


@pytest.fixture
def paired_folders(tmp_path):
    """GT images of several sizes and LQ images half their size, same names."""
    gt, lq = str(tmp_path / 'gt'), str(tmp_path / 'lq')
    for index, (name, shape) in enumerate((('b.png', (20, 30)), ('a.png', (34, 18)), ('c_1.png', (8, 12)))):
        write_images(gt, [name], seed=index, shape=shape)
        write_images(lq, [name], seed=10 + index, shape=(shape[0] // 2, shape[1] // 2))
    return gt, lq


def test_make_lmdb_round_trip_meta_info_and_idempotence(paired_folders, capsys):
    gt, lq = paired_folders
    make_lmdb.main([gt, lq])
    for folder in (gt, lq):
        lmdb_path = folder + '.lmdb'
        assert {'data.mdb', 'meta_info.txt'} <= set(os.listdir(lmdb_path))
        shapes = {n: read(os.path.join(folder, n)).shape for n in ('a.png', 'b.png', 'c_1.png')}
        expected = [f'{n} ({h},{w},3) 1' for n, (h, w, _) in shapes.items()]
        assert open(os.path.join(lmdb_path, 'meta_info.txt')).read().splitlines() == expected
        client = FileClient('lmdb', db_paths=[lmdb_path], client_keys=['gt'])
        for name in ('a.png', 'b.png', 'c_1.png'):
            assert np.array_equal(imfrombytes(client.get(name[:-4], 'gt')), read(os.path.join(folder, name)))
        del client  # lmdb refuses to open an environment twice in one process
    assert not os.path.exists(gt + '.partial.lmdb')
    # BasicSR's paired dataset reads the two databases
    dataset = PairedImageDataset({'dataroot_gt': gt + '.lmdb', 'dataroot_lq': lq + '.lmdb', 'phase': 'val', 'scale': 2,
                                  'io_backend': {'type': 'lmdb'}})
    item = dataset[0]
    assert item['gt_path'] == 'a' and tuple(item['gt'].shape) == (3, 34, 18) and tuple(item['lq'].shape) == (3, 17, 9)
    expected_gt = read(os.path.join(gt, 'a.png'))[..., ::-1].transpose(2, 0, 1) / 255.
    assert np.allclose(item['gt'].numpy(), expected_gt, atol=1e-6)
    # a second run leaves the databases alone; a changed folder needs --force
    before = age(gt + '.lmdb')
    capsys.readouterr()
    make_lmdb.main([gt])
    assert 'already holds the 3 images' in capsys.readouterr().out and stamps(gt + '.lmdb') == before
    write_images(gt, ['d.png'], seed=5, shape=(6, 6))
    assert f'{gt}.lmdb exists but does not hold exactly the 4 images of {gt}' in fails(make_lmdb.main, [gt], capsys)
    make_lmdb.main([gt, '--force'])
    assert open(os.path.join(gt + '.lmdb', 'meta_info.txt')).read().splitlines()[-1] == 'd.png (6,6,3) 1'


# ------------------------------------------------------------------ check_data


def write_option(path, datasets, scale=2):
    with open(path, 'w') as f:
        yaml.safe_dump({'name': 'check', 'scale': scale, 'datasets': datasets}, f)
    return str(path)


def test_check_data_good_and_broken_folders(paired_folders, tmp_path, capsys):
    gt, lq = paired_folders
    disk = {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': gt, 'dataroot_lq': lq,
            'io_backend': {'type': 'disk'}}
    opt = write_option(tmp_path / 'good.yml', {'train': dict(disk), 'val': dict(disk, name='Set5')})
    assert 'official Set5 has 5' in fails(check_data.main, ['-opt', opt], capsys)  # 3 images named Set5
    check_data.main(['-opt', opt, '--expect-counts', 'off'])
    out = capsys.readouterr().out
    assert 'ok    datasets.train (Tiny): 3 pairs, disk' in out and 'ok    datasets.val (Set5): 3 pairs, disk' in out

    output = fails(check_data.main, ['-opt', write_option(tmp_path / 'x3.yml', {'val': disk}, scale=3)], capsys)
    assert 'FAIL  datasets.val (Tiny): datasets.val: 3 pairs whose GT size is not 3 x the LQ size, e.g. a.png: ' \
        'GT 34x18, LQ 17x9' in output

    output = fails(check_data.main, ['-opt', write_option(tmp_path / 'patch.yml', {'train': dict(disk, gt_size=20)})],
                   capsys)  # GT b.png 20 x 30 fits; a.png 34 x 18 and c_1.png 8 x 12 do not
    assert 'FAIL  datasets.train (Tiny): datasets.train.gt_size = 20: 2 GT images are smaller, e.g. a.png: 34x18' \
        in output

    os.remove(os.path.join(lq, 'b.png'))
    output = fails(check_data.main, ['-opt', opt, '--expect-counts', 'off'], capsys)
    assert 'FAIL  datasets.train (Tiny): datasets.train: dataroot_gt (3 images) and dataroot_lq (2 images) do not ' \
        "pair with filename_tmpl \"{}\"; GT images without an LQ partner: ['b.png']" in output
    assert 'good.yml: 2 of 2 datasets failed: train, val' in output

    # a meta_info_file naming an image that is missing
    write_images(lq, ['b.png'], shape=(10, 15))
    meta = tmp_path / 'meta.txt'
    meta.write_text('a.png (34,18,3)\nz.png (34,18,3)\n')
    output = fails(check_data.main, ['-opt', write_option(tmp_path / 'meta.yml', {'train': dict(
        disk, meta_info_file=str(meta))}), '--expect-counts', 'off'], capsys)
    assert f"datasets.train: 2 images named in {meta} are missing, e.g. ['{gt}/z.png', '{lq}/z.png']" in output


def test_check_data_lmdb(paired_folders, tmp_path, capsys):
    gt, lq = paired_folders
    make_lmdb.main([gt, lq])
    lmdb_opt = {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': gt + '.lmdb', 'dataroot_lq': lq + '.lmdb',
                'io_backend': {'type': 'lmdb'}}
    check_data.main(['-opt', write_option(tmp_path / 'lmdb.yml', {'train': lmdb_opt})])
    assert 'ok    datasets.train (Tiny): 3 pairs, lmdb' in capsys.readouterr().out
    os.remove(os.path.join(lq, 'c_1.png'))
    make_lmdb.main([lq, '--force'])
    output = fails(check_data.main, ['-opt', write_option(tmp_path / 'lmdb.yml', {'train': lmdb_opt})], capsys)
    assert "datasets.train: the GT and LQ LMDBs hold different keys: ['c_1']" in output
    missing = dict(lmdb_opt, dataroot_lq=str(tmp_path / 'none.lmdb'))
    output = fails(check_data.main, ['-opt', write_option(tmp_path / 'none.yml', {'val': missing})], capsys)
    assert f'datasets.val.dataroot_lq = {tmp_path}/none.lmdb: no data.mdb (build it with python -m ' \
        'datasets_prep.make_lmdb)' in output


def test_every_script_runs_as_a_module_with_help():
    code = ('import runpy, sys\n'
            f'for name in {SCRIPTS!r}:\n'
            "    sys.argv = [name, '--help']\n"
            '    try:\n'
            "        runpy.run_module(f'datasets_prep.{name}', run_name='__main__')\n"
            '    except SystemExit as exit:\n'
            '        assert exit.code == 0, name\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('usage: ') == len(SCRIPTS)
    for expected in ('DIV2K_train_HR_sub/0001_s001.png', 'LR_bicubic/X<s>/<name>.png', '2,103 train / 1,111 test',
                     '13,712 pairs', '40x32x256x256x3', "'<key>.png (h,w,c) <compress level>'", '-opt OPT'):
        assert expected in result.stdout
