"""The CPU demo: build the demo set, train a small teacher, train one small student from scratch and with Logits KD
for several seeds (same seed, data order and iterations within a pair), and compare them on the validation images
(PSNR/SSIM on Y, border = scale, EMA weights).

Every run is BasicSR's own training pipeline (``train.py`` in a subprocess whose working directory is ``--out``) on
the option files of ``options/demo/``, with the run's name, seed and paths set in a copy written to
``<out>/options``. Runs go ``--jobs`` at a time (one thread each): the scratch students do not need the teacher and
train beside it. Run again, the demo keeps the runs that finished with the same options and resumes stopped ones
(``basicsr_kd.demo_runs``). Usage: ``python -m basicsr_kd.demo [--seeds 0 1 2] [--jobs 2]``.
"""
import argparse
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from basicsr.utils.matlab_functions import imresize
from basicsr_kd.demo_runs import (ROOT, START, checkpoint, load_demo_option, load_net, read_rgb, run_net, say, scores,
                                  train)
from datasets_prep.common import cut_sub_images, image_size, read_image
from datasets_prep.make_demo_sr import build_demo_set

OPTIONS = {'teacher': 'demo_teacher_x2', 'scratch': 'demo_student_scratch_x2', 'kd': 'demo_student_logits_x2'}


def cut_tiles(split_root, tiles_root, scale, size):
    """Cut every HR/LR training pair into ``size`` x ``size`` HR tiles and the LR tiles of the same places (as
    BasicSR's extract_subimages.py does for DIV2K): a training sample then decodes two small PNGs instead of two whole
    photographs. Missing tiles are cut; tiles older than the training split (rebuilt by build_demo_set) are cut anew."""
    hr_split, lr_split = os.path.join(split_root, 'HR'), os.path.join(split_root, 'LR_bicubic', f'X{scale}')
    if os.path.isdir(tiles_root) and os.path.getmtime(tiles_root) < os.path.getmtime(hr_split):
        shutil.rmtree(tiles_root)
    for name in sorted(os.listdir(hr_split)):
        hr_path, lr_path = os.path.join(hr_split, name), os.path.join(lr_split, name)
        sources = [(os.path.join(tiles_root, 'HR'), 1, lambda: read_image(hr_path)),
                   (os.path.join(tiles_root, 'LR_bicubic', f'X{scale}'), scale, lambda: read_image(lr_path))]
        cut_sub_images(os.path.splitext(name)[0], image_size(hr_path), sources, size, size, 0, hr_path)


def train_all(args, data_changes):
    """The teacher and the scratch students first (they are independent), then the KD students; returns the runs."""
    runs = {'teacher': OPTIONS['teacher']}
    runs.update({(kind, s): f'demo_{kind}_seed{s}' for kind in ('scratch', 'kd') for s in args.seeds})
    teacher_path = {'path:pretrain_network_t': checkpoint(args.out, runs['teacher'])}

    def run(kind, name, changes):
        seconds = train(OPTIONS[kind], name, changes, args.out, args.threads, progress)
        say(f'[{name}] done ({seconds:.3f} s/iteration)')

    def kd_job(seed):
        teacher_job.result()  # waits for the teacher (re-raises its failure)
        run('kd', runs['kd', seed], {**data_changes, 'manual_seed': seed, **teacher_path})

    with ThreadPoolExecutor(args.jobs) as pool:
        teacher_job = pool.submit(run, 'teacher', runs['teacher'], data_changes)
        jobs = [pool.submit(run, 'scratch', runs['scratch', s], {**data_changes, 'manual_seed': s}) for s in args.seeds]
        jobs += [pool.submit(kd_job, s) for s in args.seeds]
        try:
            for job in [teacher_job, *jobs]:
                job.result()  # re-raises a failed run
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return runs


def progress(run, iteration, total):
    if iteration % 200 == 0 or iteration == total:
        say(f'[{run}] iter {iteration:,}/{total:,}')


def net_of(kind, run, out):
    return load_net(load_demo_option(OPTIONS[kind])['network_g'], out, run)


def upscale(net, lq, scale):
    """A BGR uint8 image from an RGB float LR image: ``net``, or bicubic if None."""
    return run_net(net, lq, scale) if net is not None else run_net(lambda x: x, np.clip(imresize(lq, scale), 0, 1))


def evaluate(net, val_root, scale):
    """Mean PSNR and SSIM on Y (border = scale) over the validation images."""
    names = sorted(os.listdir(os.path.join(val_root, 'HR')))
    gts = [cv2.imread(os.path.join(val_root, 'HR', name)) for name in names]
    srs = [upscale(net, read_rgb(os.path.join(val_root, 'LR_bicubic', f'X{scale}', name)), scale) for name in names]
    return scores(srs, gts, scale)


def mean_sd(values, digits):
    sd = statistics.stdev(values) if len(values) > 1 else 0.
    return f'{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}' if len(values) > 1 else f'{values[0]:.{digits}f}'


def results_table(scores, params, seeds):
    """Markdown: one row per model (mean ± sample standard deviation over seeds), then the paired KD - scratch."""
    lines = ['| model | parameters | PSNR-Y (dB) | SSIM-Y |', '|---|---:|---:|---:|']
    for label, kind in (('bicubic', 'bicubic'), ('teacher', 'teacher'), ('student, from scratch', 'scratch'),
                        ('student, Logits KD', 'kd')):
        psnr, ssim = zip(*scores[kind])
        lines.append(f'| {label} | {params[kind]:,} | {mean_sd(psnr, 2)} | {mean_sd(ssim, 4)} |')
    gains = [kd[0] - scratch[0] for kd, scratch in zip(scores['kd'], scores['scratch'])]
    lines.append(f'| KD − scratch, paired by seed | | {mean_sd(gains, 2)} | |')
    per_seed = ', '.join(f'{seed}: {gain:+.3f}' for seed, gain in zip(seeds, gains))
    lines.append(f'\nStudents: {len(seeds)} seeds; ± is the standard deviation over seeds. KD − scratch per seed '
                 f'(dB): {per_seed}.')
    return '\n'.join(lines)


def evaluate_all(runs, args, val_root, scale):
    """Networks ({kind: [nets]}, bicubic = [None]), their scores ({kind: [(psnr, ssim)]}) and parameter counts."""
    nets = {'bicubic': [None], 'teacher': [net_of('teacher', runs['teacher'], args.out)]}
    nets.update({kind: [net_of(kind, runs[kind, s], args.out) for s in args.seeds] for kind in ('scratch', 'kd')})
    scores = {kind: [evaluate(net, val_root, scale) for net in group] for kind, group in nets.items()}
    params = {kind: sum(p.numel() for p in group[0].parameters()) if group[0] else 0 for kind, group in nets.items()}
    return nets, scores, params


def write_strip(nets, val_root, scale, name, crop, path):
    """bicubic | scratch | KD | teacher | GT on one validation crop, each panel enlarged 2x and labelled."""
    lq = read_rgb(os.path.join(val_root, 'LR_bicubic', f'X{scale}', name))
    top, left, size = crop
    panels = {label: upscale(net, lq, scale) for label, net in nets.items()}
    panels['GT'] = cv2.imread(os.path.join(val_root, 'HR', name))
    tiles = []
    for label, img in panels.items():
        tile = cv2.resize(img[top:top + size, left:left + size], None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        for color, width in (((0, 0, 0), 4), ((0, 255, 255), 2)):  # yellow on a black outline
            cv2.putText(tile, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, width)
        tiles.append(tile)
    cv2.imwrite(path, np.concatenate(tiles, axis=1))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='one student pair per seed')
    parser.add_argument('--jobs', type=int, default=2, help='training runs at a time')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per training run')
    parser.add_argument('--tile-size', type=int, default=96, help='HR size of the training tiles')
    parser.add_argument('--data', default=os.path.join(ROOT, 'datasets', 'demo_sr'), help='demo set folder')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_output'), help='runs, table and image strip')
    parser.add_argument('--strip', nargs=4, default=['astronaut.png', 330, 115, 96],
                        metavar=('IMAGE', 'TOP', 'LEFT', 'SIZE'), help='validation crop (HR pixels) in strip.png')
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    return args


def main():
    args = parse_args()
    os.makedirs(os.path.join(args.out, 'options'), exist_ok=True)
    scale = load_demo_option(OPTIONS['teacher'])['scale']
    val_root = os.path.join(args.data, 'val')
    say(f'1/3 demo data in {args.data} (x{scale}), training tiles of {args.tile_size} px')
    build_demo_set(args.data, scales=(scale, ))
    tiles = os.path.join(args.data, f'train_tiles{args.tile_size}')
    cut_tiles(os.path.join(args.data, 'train'), tiles, scale, args.tile_size)
    data_changes = {'datasets:train:dataroot_gt': os.path.join(tiles, 'HR'),
                    'datasets:train:dataroot_lq': os.path.join(tiles, 'LR_bicubic', f'X{scale}')}
    say(f'2/3 training the teacher and the students (seeds {args.seeds}), {args.jobs} runs at a time')
    runs = train_all(args, data_changes)
    say('3/3 evaluation on the validation images')
    nets, scores, params = evaluate_all(runs, args, val_root, scale)
    table = results_table(scores, params, args.seeds)
    strip = {'bicubic': None, 'scratch': nets['scratch'][0], 'KD': nets['kd'][0], 'teacher': nets['teacher'][0]}
    write_strip(strip, val_root, scale, args.strip[0], [int(v) for v in args.strip[1:]],
                os.path.join(args.out, 'strip.png'))
    num_val = len(os.listdir(os.path.join(val_root, 'HR')))
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(f'# CPU demo: Logits KD, x{scale}, {num_val} validation images\n\n{table}\n\n'
                f'Wall time {time.time() - START:.0f} s.\n')
    print(f'\n{table}\n', flush=True)
    say(f'done: {args.out}/results.md and {args.out}/strip.png (bicubic | scratch | KD | teacher | GT)')


if __name__ == '__main__':
    main()
