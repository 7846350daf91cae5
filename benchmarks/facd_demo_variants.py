"""FACD's two open choices in Eq. 4 on the demo pair: the table of README "FACD" and of the FACD option headers.

Trains the demo teacher (reused when present), then, per seed, the demo student with Logits KD and with FACD in four
forms of L_FACD: as printed (a sum over the batch's samples, the student negatives differentiated), detached student
negatives, a per-sample mean (``reduction: mean``), and both. Every run has the same data, seed, iterations, schedule
and EMA as its Logits KD partner; PSNR/SSIM-Y of the EMA weights on the demo's validation images, FACD − Logits KD
paired by seed. Usage: ``python -m benchmarks.facd_demo_variants [--iterations 3000] [--seeds 0 1 2] [--jobs 2]``.
"""
import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from basicsr_kd.demo import cut_tiles, evaluate, mean_sd
from basicsr_kd.demo_runs import ROOT, checkpoint, load_demo_option, load_net, say, train
from datasets_prep.make_demo_sr import build_demo_set

FACD, LOGITS, TEACHER = 'demo_student_facd_x2', 'demo_student_logits_x2', 'demo_teacher_x2'
VARIANTS = {  # train.feature_opt of options/demo/demo_student_facd_x2.yml with these two keys
    'printed': {'detach_student_negatives': False, 'reduction': 'sum'},
    'detached': {'detach_student_negatives': True, 'reduction': 'sum'},
    'mean': {'detach_student_negatives': False, 'reduction': 'mean'},
    'both': {'detach_student_negatives': True, 'reduction': 'mean'},
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iterations', type=int, default=3000, help='student iterations (cosine period too)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--jobs', type=int, default=2, help='training runs at a time')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per training run')
    parser.add_argument('--tile-size', type=int, default=96, help='HR size of the training tiles')
    parser.add_argument('--data', default=os.path.join(ROOT, 'datasets', 'demo_sr'), help='demo set folder')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_output', 'facd_variants'), help='runs and table')
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    return args


def feature_opt_changes(variant):
    return {'train:feature_opt': {**load_demo_option(FACD)['train']['feature_opt'], **VARIANTS[variant]}}


def main():
    args = parse_args()
    os.makedirs(os.path.join(args.out, 'options'), exist_ok=True)
    build_demo_set(args.data, scales=(2, ))
    tiles = os.path.join(args.data, f'train_tiles{args.tile_size}')
    cut_tiles(os.path.join(args.data, 'train'), tiles, 2, args.tile_size)
    data = {'datasets:train:dataroot_gt': os.path.join(tiles, 'HR'),
            'datasets:train:dataroot_lq': os.path.join(tiles, 'LR_bicubic', 'X2')}
    schedule = {'train:total_iter': args.iterations, 'train:scheduler:periods': [args.iterations]}
    train(TEACHER, TEACHER, data, args.out, args.threads)
    common = {**data, **schedule, 'path:pretrain_network_t': checkpoint(args.out, TEACHER)}
    runs = {('logits', s): (LOGITS, f'logits_{args.iterations}_seed{s}', {**common, 'manual_seed': s})
            for s in args.seeds}
    runs.update({(v, s): (FACD, f'facd_{v}_{args.iterations}_seed{s}',
                          {**common, 'manual_seed': s, **feature_opt_changes(v)})
                 for v in args.variants for s in args.seeds})
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for job in [pool.submit(train, option, run, changes, args.out, args.threads)
                    for option, run, changes in runs.values()]:
            job.result()
    say(f'students trained in {time.time() - start:.0f} s')
    val_root = os.path.join(args.data, 'val')
    scores = {key: evaluate(load_net(load_demo_option(option)['network_g'], args.out, run), val_root, 2)
              for key, (option, run, _) in runs.items()}
    lines = [f'{args.iterations} iterations, seeds {args.seeds}; ± is the standard deviation over seeds.', '',
             '| L_FACD | PSNR-Y (dB) | SSIM-Y | − Logits KD, paired (dB) | per seed |', '|---|---:|---:|---:|---|']
    for name in ['logits', *args.variants]:
        psnr = [scores[name, s][0] for s in args.seeds]
        ssim = [scores[name, s][1] for s in args.seeds]
        gains = [p - scores['logits', s][0] for p, s in zip(psnr, args.seeds)]
        per_seed = ', '.join(f'{p:.2f}' for p in psnr)
        gain = '' if name == 'logits' else mean_sd(gains, 2)
        lines.append(f'| {name} | {mean_sd(psnr, 2)} | {mean_sd(ssim, 4)} | {gain} | {per_seed} |')
    table = '\n'.join(lines)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(f'# FACD variants on the demo pair\n\n{table}\n')
    print(f'\n{table}\n', flush=True)


if __name__ == '__main__':
    main()
