"""Evaluation as the papers report it: the metric settings of options/test/ against hand-computed values, tiled and
padded inference (KDEvalModel), test.py writing metrics.md/metrics.csv, the results table, and the generated files."""
import csv
import math
import os
import re

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.metrics import calculate_metric, calculate_psnr, calculate_ssim

from conftest import OPTIONS, ROOT, build_model_from, load_option, run_train
from datasets_prep import make_test_options
from kd_models.kd_eval_model import forward_tiled, pad_to_multiple
from basicsr_kd.results_table import main as results_table

TEST_OPTIONS = os.path.join(OPTIONS, 'test')
SR_X4 = os.path.join(TEST_OPTIONS, 'test_logits_edsr_x4.yml')  # Y, crop 4
DEBLUR = os.path.join(TEST_OPTIONS, 'test_logits_nafnet_deblur.yml')  # RGB, crop 0
DERAIN = os.path.join(TEST_OPTIONS, 'test_logits_restormer_derain.yml')  # Y, crop 0
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 2}
SSIM_C1 = (0.01 * 255)**2


def metrics_of(option_file, img, img2):
    """{metric: value} of the option file's ``val.metrics`` for two uint8 BGR HWC images, through BasicSR."""
    return {
        name: calculate_metric({
            'img': img,
            'img2': img2
        }, opt)
        for name, opt in load_option(option_file)['val']['metrics'].items()
    }


def luma(value):
    """Y of YCbCr (ITU-R BT.601, MATLAB's rgb2ycbcr) of a grey level, in 8-bit units."""
    return 16 + (65.481 + 128.553 + 24.966) * value / 255


def random_image(seed, size=(40, 36), high=200):
    return np.random.default_rng(seed).integers(0, high, (*size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize('option_file', [SR_X4, DEBLUR, DERAIN], ids=os.path.basename)
def test_identical_images_give_inf_and_one(option_file):
    img = random_image(0)
    result = metrics_of(option_file, img, img.copy())
    assert result['psnr'] == math.inf
    assert result['ssim'] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize('offset', [1, 5, 20])
def test_constant_offset_gives_the_closed_form_on_rgb_and_on_y(offset):
    img = random_image(1)
    shifted = img + np.uint8(offset)
    assert metrics_of(DEBLUR, img, shifted)['psnr'] == pytest.approx(20 * math.log10(255 / offset), rel=1e-12)
    y_offset = luma(offset) - luma(0)  # 219/255 of the RGB offset: Y differs from RGB
    expected_y = 20 * math.log10(255 / y_offset)
    assert metrics_of(DERAIN, img, shifted)['psnr'] == pytest.approx(expected_y, rel=1e-5)
    assert metrics_of(SR_X4, img, shifted)['psnr'] == pytest.approx(expected_y, rel=1e-5)


def test_ssim_of_constant_images_gives_the_closed_form_on_rgb_and_on_y():
    c, d = 100, 10
    img = np.full((32, 32, 3), c, np.uint8)

    def ssim_of_constants(a, b):  # the variances and the covariance are 0: only the luminance term is left
        return (2 * a * b + SSIM_C1) / (a**2 + b**2 + SSIM_C1)

    assert metrics_of(DEBLUR, img, img + np.uint8(d))['ssim'] == pytest.approx(ssim_of_constants(c, c + d), rel=1e-9)
    assert metrics_of(DERAIN, img, img + np.uint8(d))['ssim'] == pytest.approx(
        ssim_of_constants(luma(c), luma(c + d)), rel=1e-6)


def test_the_border_of_scale_pixels_is_not_counted():
    img = random_image(2)
    changed = img.copy()
    changed[:4] = 255 - changed[:4]  # only the 4-pixel border differs
    changed[:, -4:] = 0
    sr = metrics_of(SR_X4, img, changed)  # crop_border 4
    assert sr['psnr'] == math.inf and sr['ssim'] == pytest.approx(1.0, abs=1e-12)
    whole = metrics_of(DEBLUR, img, changed)  # crop_border 0
    assert whole['psnr'] < 30 and whole['ssim'] < 0.99
    changed[4, 4] += 1  # one pixel inside the border counts
    assert metrics_of(SR_X4, img, changed)['psnr'] < math.inf


# --------------------------------------------------------------------------------------------------- inference
def tiny_edsr(seed=0):
    torch.manual_seed(seed)
    return build_network(TINY_EDSR).eval()


def test_tiles_equal_whole_image_inference_for_a_convolutional_net():
    # receptive field of the tiny EDSR: 6 LQ convolutions + the upsampler's + conv_last at HR -> 8 LQ pixels
    net, lq = tiny_edsr(), torch.rand(1, 3, 37, 30)
    with torch.no_grad():
        whole = net(lq)
        tiled = forward_tiled(net, lq, size=24, overlap=16, scale=2)  # 37: tiles at 0, 8 and 13 (kept parts overlap)
        seams = forward_tiled(net, lq, size=24, overlap=4, scale=2)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    assert (seams - whole).abs().max() > 1e-3  # too small an overlap shows at the seams


def test_pad_to_multiple_reflects_and_replicates_small_images():
    img = torch.arange(13 * 10, dtype=torch.float32).view(1, 1, 13, 10)
    padded = pad_to_multiple(img, 4)
    assert padded.shape == (1, 1, 16, 12)
    assert torch.equal(padded[..., :13, :10], img)
    assert torch.equal(padded[..., 13:, :10], img[..., [11, 10, 9], :])  # reflected about the last row
    assert torch.equal(padded[..., :13, 10:], img[..., :, [8, 7]])
    small = pad_to_multiple(torch.rand(1, 1, 2, 3), 4)  # too small to reflect 2 rows
    assert torch.equal(small[..., 3, :3], small[..., 1, :3])


def save_student(path, net_opt, seed=0, **extras):
    """A BasicSR checkpoint whose ``params`` and ``params_ema`` differ (so the test knows which one is used), with
    ``extras`` as further entries."""
    torch.manual_seed(seed)
    params, params_ema = build_network(net_opt).state_dict(), build_network(net_opt).state_dict()
    torch.save({'params': params, 'params_ema': params_ema, **extras}, path)
    return params_ema


def eval_opt(tmp_path, net_opt, scale, val=None):
    return {
        'name': 'eval',
        'model_type': 'KDEvalModel',
        'scale': scale,
        'num_gpu': 0,
        'network_g': net_opt,
        'path': {
            'pretrain_network_g': str(tmp_path / 'student.pth'),
            'param_key_g': 'params_ema'
        },
        'val': val or {}
    }


def test_model_tiles_with_the_ema_weights(tmp_path):
    params_ema = save_student(tmp_path / 'student.pth', TINY_EDSR)
    model = build_model_from(
        eval_opt(tmp_path, TINY_EDSR, 2, {'tile': {
            'size': 24,
            'overlap': 16
        }}), str(tmp_path / 'exp'), is_train=False)
    lq = torch.rand(1, 3, 30, 41)
    model.feed_data({'lq': lq})
    model.test()
    net = build_network(TINY_EDSR).eval()
    net.load_state_dict(params_ema)
    with torch.no_grad():
        torch.testing.assert_close(model.output, net(lq), rtol=0, atol=1e-5)


def test_windowed_student_is_padded_to_its_window(tmp_path):
    swinir = {
        'type': 'SwinIR',
        'upscale': 2,
        'in_chans': 3,
        'img_size': 16,
        'window_size': 4,
        'img_range': 1.,
        'depths': [1],
        'embed_dim': 12,
        'num_heads': [2],
        'mlp_ratio': 2,
        'upsampler': 'pixelshuffledirect'
    }
    save_student(tmp_path / 'student.pth', swinir)
    for val in ({}, {'tile': {'size': 6, 'overlap': 2}}):  # neither 13 x 10 nor the 6 x 6 tiles are multiples of 4
        model = build_model_from(eval_opt(tmp_path, swinir, 2, val), str(tmp_path / 'exp'), is_train=False)
        model.feed_data({'lq': torch.rand(1, 3, 13, 10)})
        model.test()
        assert model.output.shape == (1, 3, 26, 20)
        assert torch.isfinite(model.output).all()


@pytest.mark.parametrize('tile', [{'size': 16, 'overlap': 16}, {'size': 16}, 32])
def test_bad_tile_option_names_it(tmp_path, tile):
    save_student(tmp_path / 'student.pth', TINY_EDSR)
    with pytest.raises(ValueError, match='val.tile'):
        build_model_from(eval_opt(tmp_path, TINY_EDSR, 2, {'tile': tile}), str(tmp_path / 'exp'), is_train=False)


@pytest.mark.parametrize('recorded', ['[-1,1]', None], ids=['recorded', 'not recorded'])
def test_val_pixel_range_maps_the_input_into_it_and_the_output_back(tmp_path, recorded):
    extras = {} if recorded is None else {'pixel_range': recorded}  # None: a checkpoint of plain BasicSR training
    params_ema = save_student(tmp_path / 'student.pth', TINY_EDSR, **extras)
    net = build_network(TINY_EDSR).eval()
    net.load_state_dict(params_ema)
    lq = torch.rand(1, 3, 30, 41)
    with torch.no_grad():
        expected = (net(2 * lq - 1) + 1) / 2
    for tile in (None, {'size': 24, 'overlap': 16}):
        val = {'pixel_range': '[-1,1]', 'tile': tile}
        model = build_model_from(eval_opt(tmp_path, TINY_EDSR, 2, val), str(tmp_path / 'exp'), is_train=False)
        model.feed_data({'lq': lq})
        model.test()
        torch.testing.assert_close(model.output, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize('recorded, given, match', [
    ('[-1,1]', None, r"val.pixel_range is not set \(default \[0,1\]\) but .* trained in \[-1,1\].* '\[-1,1\]'"),
    ('[-1,1]', '[0,1]', r"val.pixel_range = \[0,1\] but .* trained in \[-1,1\].* '\[-1,1\]'"),
    ('[0,1]', '[-1,1]', r"val.pixel_range = \[-1,1\] but .* trained in \[0,1\].* '\[0,1\]'"),
    (None, '[0,255]', r'val.pixel_range = \[0,255\]: use one of'),
], ids=['not set', 'recorded [-1,1]', 'recorded [0,1]', 'no range'])
def test_a_pixel_range_the_checkpoint_contradicts_is_refused_naming_the_key(tmp_path, recorded, given, match):
    save_student(tmp_path / 'student.pth', TINY_EDSR, **({} if recorded is None else {'pixel_range': recorded}))
    with pytest.raises(ValueError, match=match):
        build_model_from(eval_opt(tmp_path, TINY_EDSR, 2, {'pixel_range': given}), str(tmp_path / 'exp'),
                         is_train=False)


def test_missing_student_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match='path.pretrain_network_g'):
        build_model_from(eval_opt(tmp_path, TINY_EDSR, 2), str(tmp_path / 'exp'), is_train=False)


# --------------------------------------------------------------------------------------------- test.py, tables
def write_paired_set(root, names, seed):
    """GT 24 x 24 and LQ 12 x 12 (area-downscaled) PNG pairs of the same names."""
    rng = np.random.default_rng(seed)
    for sub in ('HR', 'LR'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for name in names:
        gt = cv2.GaussianBlur(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (5, 5), 1)
        cv2.imwrite(os.path.join(root, 'HR', f'{name}.png'), gt)
        cv2.imwrite(os.path.join(root, 'LR', f'{name}.png'), cv2.resize(gt, (12, 12), interpolation=cv2.INTER_AREA))


def direct_metrics(net, root, crop_border):
    """Mean PSNR/SSIM on Y of ``net`` over a paired folder, computed here without BasicSR's model or data code."""
    psnr, ssim = [], []
    for name in sorted(os.listdir(os.path.join(root, 'HR'))):
        lq = cv2.imread(os.path.join(root, 'LR', name))[..., ::-1] / 255.
        with torch.no_grad():
            out = net(torch.from_numpy(lq.copy()).permute(2, 0, 1)[None].float())[0].clamp(0, 1)
        sr = (out.permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8)
        gt = cv2.imread(os.path.join(root, 'HR', name))
        psnr.append(calculate_psnr(sr, gt, crop_border, test_y_channel=True))
        ssim.append(calculate_ssim(sr, gt, crop_border, test_y_channel=True))
    return {'psnr': np.mean(psnr), 'ssim': np.mean(ssim)}


def test_test_py_writes_the_metrics_table(tmp_path):
    sets = {'SetA': ['a1', 'a2'], 'SetB': ['b1']}
    for i, (name, images) in enumerate(sets.items()):
        write_paired_set(str(tmp_path / name), images, seed=i)
    params_ema = save_student(tmp_path / 'student.pth', TINY_EDSR)
    opt = load_option(os.path.join(TEST_OPTIONS, 'test_logits_edsr_x2.yml'))  # Y, crop 2
    opt.update(name='tiny_eval', num_gpu=0, network_g=TINY_EDSR)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'student.pth')
    opt['datasets'] = {
        f'test_{i}': {
            'name': name,
            'type': 'PairedImageDataset',
            'io_backend': {
                'type': 'disk'
            },
            'dataroot_gt': str(tmp_path / name / 'HR'),
            'dataroot_lq': str(tmp_path / name / 'LR')
        }
        for i, name in enumerate(sets, 1)
    }
    run_train(opt, str(tmp_path), script=os.path.join(ROOT, 'test.py'))

    results = tmp_path / 'results' / 'tiny_eval'
    with open(results / 'metrics.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['dataset', 'psnr', 'ssim']
    assert [row[0] for row in rows[1:]] == ['SetA', 'SetB']
    net = build_network(TINY_EDSR).eval()
    net.load_state_dict(params_ema)
    for name, psnr, ssim in rows[1:]:
        expected = direct_metrics(net, str(tmp_path / name), crop_border=2)
        assert float(psnr) == pytest.approx(expected['psnr'], abs=1e-5)
        assert float(ssim) == pytest.approx(expected['ssim'], abs=1e-5)
    markdown = (results / 'metrics.md').read_text()
    assert '| dataset | psnr | ssim |' in markdown
    assert f'| SetA | {float(rows[1][1]):.4f} | {float(rows[1][2]):.4f} |' in markdown
    assert 'crop_border=2, test_y_channel=True' in markdown
    assert sorted(os.listdir(results / 'visualization' / 'SetA')) == ['a1_tiny_eval.png', 'a2_tiny_eval.png']


def test_results_table_merges_runs(tmp_path, capsys):
    runs = {
        'logits_edsr_x4': 'dataset,psnr,ssim\nSet5,32.1,0.89\nSet14,28.5,0.78\n',
        'fakd_edsr_x4': 'dataset,psnr,ssim\nSet5,32.25,0.8912\n'
    }
    paths = []
    for name, text in runs.items():
        os.makedirs(tmp_path / 'results' / name)
        paths.append(str(tmp_path / 'results' / name / 'metrics.csv'))
        with open(paths[-1], 'w') as f:
            f.write(text)
    results_table([*paths, '--out', str(tmp_path / 'table')])
    with open(tmp_path / 'table.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['method', 'Set5 psnr', 'Set5 ssim', 'Set14 psnr', 'Set14 ssim']
    assert rows[1] == ['logits_edsr_x4', '32.100000', '0.890000', '28.500000', '0.780000']
    assert rows[2] == ['fakd_edsr_x4', '32.250000', '0.891200', '', '']
    markdown = (tmp_path / 'table.md').read_text()
    assert markdown == capsys.readouterr().out.split('written:')[0]
    assert '| fakd_edsr_x4 | 32.2500 | 0.8912 | - | - |' in markdown.splitlines()


def test_results_table_refuses_two_runs_of_one_name(tmp_path):
    for parent in ('a', 'b'):
        os.makedirs(tmp_path / parent / 'run')
        (tmp_path / parent / 'run' / 'metrics.csv').write_text('dataset,psnr\nSet5,30\n')
    with pytest.raises(ValueError, match='a second run named "run"'):
        results_table([str(tmp_path / p / 'run' / 'metrics.csv') for p in ('a', 'b')])


# ---------------------------------------------------------------------------------------- the generated files
def test_committed_evaluation_options_are_what_the_generator_writes():
    assert make_test_options.committed_files() == make_test_options.render_all()


SR_STUDENT_OPTIONS = sorted(
    p for p in os.listdir(OPTIONS)
    if re.search(r'_x\d+\.yml$', p) and load_option(os.path.join(OPTIONS, p))['model_type'] not in
    make_test_options.NOT_A_STUDENT)


@pytest.mark.parametrize('path', SR_STUDENT_OPTIONS)
def test_each_trained_sr_student_is_evaluated_as_the_papers_do(path):
    training = load_option(os.path.join(OPTIONS, path))
    opt = load_option(os.path.join(TEST_OPTIONS, f'test_{path}'))
    scale = training['scale']
    assert opt['model_type'] == 'KDEvalModel' and opt['scale'] == scale
    assert opt['network_g'] == make_test_options.student_network(training['network_g'])  # CSD: its slice's network
    assert opt['path']['pretrain_network_g'] == f'experiments/{training["name"]}/models/net_g_latest.pth'
    assert [d['name'] for d in opt['datasets'].values()] == ['Set5', 'Set14', 'B100', 'Urban100', 'Manga109']
    assert all(d['dataroot_lq'].endswith(f'/X{scale}') for d in opt['datasets'].values())
    for metric in opt['val']['metrics'].values():
        assert metric['crop_border'] == scale and metric['test_y_channel'] is True


@pytest.mark.parametrize('task, sets, y_channel', [
    ('deblur', ['GoPro', 'HIDE'], False),
    ('derain', ['Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200', 'Rain1400'], True),
    ('denoise', ['SIDD'], False),
])
def test_each_trained_restoration_student_is_evaluated_as_the_papers_do(task, sets, y_channel):
    paths = [p for p in os.listdir(TEST_OPTIONS) if p.endswith(f'_{task}.yml')]
    assert paths, f'no evaluation option file for {task}'
    for path in paths:
        with open(os.path.join(TEST_OPTIONS, path)) as f:
            text = f.read()
        opt = yaml.safe_load(text)
        training = load_option(os.path.join(OPTIONS, path[len('test_'):]))
        assert text.startswith('# ') and opt['scale'] == 1 and opt['network_g'] == training['network_g']
        assert opt['path']['pretrain_network_g'] == f'experiments/{training["name"]}/models/net_g_latest.pth'
        assert [d['name'] for d in opt['datasets'].values()] == sets
        assert opt['val'].get('pixel_range') == training['train'].get('pixel_range')  # SKD's files set it
        for metric in opt['val']['metrics'].values():
            assert metric['crop_border'] == 0 and metric['test_y_channel'] is y_channel
