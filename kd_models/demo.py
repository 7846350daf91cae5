"""The CPU demo: build the demo set, train a small teacher, train one student from scratch and with Logits KD for
several seeds, and compare all of them on the validation images (PSNR/SSIM on Y, border = scale).

Every run is BasicSR's own training pipeline (``train.py`` in a subprocess) on the option files of
``options/demo/`` (with the run's name and seed); a run whose final checkpoint exists is reused (``--retrain``
trains it again).
Usage: ``python -m kd_models.demo [--seeds 0 1 2]``.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np
import torch
import yaml

import kd_archs  # noqa: F401  (registers the plugin; the first import applies the BasicSR compatibility fixes)
import kd_models  # noqa: F401
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize
from datasets_prep.make_demo_sr import build_demo_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = {
    'teacher': 'options/demo/demo_teacher_x2.yml',
    'scratch': 'options/demo/demo_student_scratch_x2.yml',
    'kd': 'options/demo/demo_student_logits_x2.yml'
}


def load_option(name):
    with open(os.path.join(ROOT, OPTIONS[name])) as f:
        return yaml.safe_load(f)


def checkpoint_of(run_name):
    return os.path.join(ROOT, 'experiments', run_name, 'models', 'net_g_latest.pth')


def train(option, run_name, changes, out, retrain):
    """Run train.py on an option file with ``changes`` (name, seed, paths) written to ``out``; stream its progress.

    The changes go into a copy of the option file: BasicSR 1.4.2 seeds the run before it applies ``--force_yml``.
    """
    if os.path.isfile(checkpoint_of(run_name)) and not retrain:
        print(f'[{run_name}] reusing {checkpoint_of(run_name)}', flush=True)
        return
    opt = load_option(option)
    opt['name'] = run_name
    for key, value in changes.items():
        *parents, leaf = key.split(':')
        node = opt
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    opt_path = os.path.join(out, 'options', f'{run_name}.yml')
    os.makedirs(os.path.dirname(opt_path), exist_ok=True)
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    start = time.time()
    with subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), '-opt', opt_path], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1) as proc:
        log = []
        for line in iter(proc.stdout.readline, ''):
            log.append(line)
            if '][epoch:' in line:
                iteration, losses = line.split(' iter:')[1].split(',')[0].strip(), line.split(']')[-1].strip()
                print(f'[{run_name}] iter {iteration}: {losses}', flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f'training {run_name} failed:\n{"".join(log[-40:])}')
    print(f'[{run_name}] done in {time.time() - start:.0f} s', flush=True)


def load_student(option, run_name):
    net = build_network(load_option(option)['network_g'])
    net.load_state_dict(torch.load(checkpoint_of(run_name), map_location='cpu', weights_only=True)['params_ema'])
    return net.eval()


def read_rgb(path):
    return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.


def super_resolve(net, lq):
    """``net`` on an RGB float image in [0, 1]; returns a BGR uint8 image as BasicSR's metrics expect."""
    with torch.no_grad():
        return tensor2img(net(img2tensor(lq, bgr2rgb=False)[None]).clamp(0, 1))


def bicubic(lq, scale):
    return tensor2img(img2tensor(np.clip(imresize(lq, scale), 0, 1), bgr2rgb=False))


def evaluate(upscale, val_root, scale):
    """Mean PSNR/SSIM on Y (border = scale) of ``upscale(lq) -> BGR uint8`` over the validation images."""
    psnr, ssim = [], []
    for name in sorted(os.listdir(os.path.join(val_root, 'HR'))):
        gt = cv2.imread(os.path.join(val_root, 'HR', name))
        sr = upscale(read_rgb(os.path.join(val_root, 'LR_bicubic', f'X{scale}', name)))
        psnr.append(calculate_psnr(sr, gt, crop_border=scale, test_y_channel=True))
        ssim.append(calculate_ssim(sr, gt, crop_border=scale, test_y_channel=True))
    return float(np.mean(psnr)), float(np.mean(ssim))


def spread(values):
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}'


def results_table(rows, kd_gains, seeds):
    """Markdown table: one row per model (means ± standard deviations over seeds), then the paired KD gain."""
    lines = ['| model | params | PSNR-Y (dB) | SSIM-Y |', '|---|---:|---:|---:|']
    for name, params, psnr, ssim in rows:
        lines.append(f'| {name} | {params} | {spread(psnr)} | {spread(ssim)} |')
    per_seed = ', '.join(f'{gain:+.3f}' for gain in kd_gains)
    lines.append(f'\nKD − scratch, paired by seed ({len(seeds)} seeds {seeds}): {spread(kd_gains)} dB '
                 f'(per seed: {per_seed}); ± is the standard deviation over seeds.')
    return '\n'.join(lines)


def write_strip(networks, val_root, scale, path, name='camera.png', crop=(70, 190, 112)):
    """PNG strip of one validation crop (the cameraman's camera): bicubic | scratch | KD | teacher | GT, each
    enlarged 2x and labelled."""
    lq = read_rgb(os.path.join(val_root, 'LR_bicubic', f'X{scale}', name))
    top, left, size = crop
    panels = {'bicubic': bicubic(lq, scale), **{label: super_resolve(net, lq) for label, net in networks.items()},
              'GT': cv2.imread(os.path.join(val_root, 'HR', name))}
    tiles = []
    for label, img in panels.items():
        tile = cv2.resize(img[top:top + size, left:left + size], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        cv2.putText(tile, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
        tiles.append(tile)
    cv2.imwrite(path, np.concatenate(tiles, axis=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='one student pair per seed')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_output'), help='table and image strip')
    parser.add_argument('--retrain', action='store_true', help='train again even if a checkpoint exists')
    args = parser.parse_args()
    start = time.time()
    scale = load_option('teacher')['scale']
    data_root = os.path.join(ROOT, 'datasets', 'demo_sr')
    val_root = os.path.join(data_root, 'val')
    print('== 1/4 demo data', flush=True)
    build_demo_set(data_root)
    print('== 2/4 teacher', flush=True)
    teacher_run = load_option('teacher')['name']
    train('teacher', teacher_run, {}, args.out, args.retrain)
    print(f'== 3/4 students, seeds {args.seeds}: from scratch and with Logits KD', flush=True)
    for seed in args.seeds:
        train('scratch', f'demo_scratch_seed{seed}', {'manual_seed': seed}, args.out, args.retrain)
        train('kd', f'demo_kd_seed{seed}', {'manual_seed': seed, 'path:pretrain_network_t': checkpoint_of(teacher_run)},
              args.out, args.retrain)
    print('== 4/4 evaluation on the validation images', flush=True)
    teacher = load_student('teacher', teacher_run)
    rows = [('bicubic', 0, *[[v] for v in evaluate(lambda lq: bicubic(lq, scale), val_root, scale)])]
    scores = {}
    for kind, option in (('scratch', 'scratch'), ('kd', 'kd')):
        scores[kind] = [evaluate(lambda lq, n=load_student(option, f'demo_{kind}_seed{s}'): super_resolve(n, lq),
                                 val_root, scale) for s in args.seeds]
    count = sum(p.numel() for p in load_student('scratch', f'demo_scratch_seed{args.seeds[0]}').parameters())
    rows += [('student, scratch', f'{count:,}', [p for p, _ in scores['scratch']], [s for _, s in scores['scratch']]),
             ('student, Logits KD', f'{count:,}', [p for p, _ in scores['kd']], [s for _, s in scores['kd']]),
             ('teacher', f'{sum(p.numel() for p in teacher.parameters()):,}',
              *[[v] for v in evaluate(lambda lq: super_resolve(teacher, lq), val_root, scale)])]
    gains = [kd[0] - sc[0] for kd, sc in zip(scores['kd'], scores['scratch'])]
    table = results_table(rows, gains, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(f'# CPU demo, x{scale}, {len(os.listdir(val_root + "/HR"))} validation images\n\n{table}\n')
    networks = {'scratch': load_student('scratch', f'demo_scratch_seed{args.seeds[0]}'),
                'KD': load_student('kd', f'demo_kd_seed{args.seeds[0]}'), 'teacher': teacher}
    write_strip(networks, val_root, scale, os.path.join(args.out, 'strip.png'))
    print(f'\n{table}\n\nTable: {args.out}/results.md, image strip: {args.out}/strip.png; '
          f'wall time {time.time() - start:.0f} s', flush=True)


if __name__ == '__main__':
    main()
