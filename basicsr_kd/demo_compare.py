"""Every method side by side on the CPU demo: the x2 SR demo pair (EDSR teacher -> small EDSR student) from scratch
and with each SR method and baseline, and a denoising demo pair (NAFNet teacher -> small NAFNet) from scratch, with
Logits KD, WaveKD, SLKD, SKD and DFKD; several seeds each, the same data, iterations, schedule and EMA within a task.

    python -m basicsr_kd.demo_compare [--seeds 0 1 2] [--iterations N] [--methods logits dckd ...] [--jobs 2]
    make compare

Writes under ``--out`` (default ``demo_output/compare``): ``results.md`` (PSNR/SSIM of the EMA weights over the
validation images, on Y for SR and RGB for denoising, mean ± standard deviation over seeds, the gain over scratch
and over Logits KD paired by seed, the mean logged step time and its ratio to the scratch step of the task),
``gains.png`` (the paired gains with
their spread) and ``crops_<task>.png`` (the validation region where the students differ most, with |error| maps).

Every run is BasicSR's ``train.py`` on an option file of ``options/demo/`` (``basicsr_kd.demo_runs``): started
again, the command keeps finished runs and resumes stopped ones. Teachers train first, then the students seed by
seed, ``--jobs`` runs at a time with one thread each. Frozen networks that the demo cannot train (DCKD's VQGAN
encoder, SKD's VGG-19) load the file given with ``--frozen vqgan=PATH`` / ``--frozen vgg=PATH`` and otherwise get
random weights (seeded); the table says which.
"""
import argparse
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from basicsr.archs import build_network
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize
from basicsr_kd.demo import cut_tiles
from basicsr_kd.demo_figures import crops_picture, gains_plot
from basicsr_kd.demo_runs import ROOT, START, load_demo_option, load_net, read_rgb, say, train, with_changes
from basicsr_kd.demo_runs import scores as image_scores
from kd_models.kd_eval_model import forward_padded
from datasets_prep.make_demo_restoration import build_demo_restoration_set, tile_folder
from datasets_prep.make_demo_sr import build_demo_set

FROZEN_FOLDER = 'frozen'  # option files name their untrainable frozen networks' weights frozen/<file> (run cwd)


@dataclass(frozen=True)
class Arm:
    """One row of the comparison: an option file of ``options/demo/`` trained once (a teacher) or once per seed."""
    key: str
    label: str
    option: str
    task: str
    needs: tuple = ()  # keys of the teacher arms whose weights the option file reads
    seeded: bool = True
    fed: str = 'lq'  # what it is fed at evaluation: 'lq', 'gt' (PISR's teacher) or 'teachers' (the MTKD aggregator)


SR_TEACHERS = ('teacher', 'teacher_rcan', 'teacher_swinir')
ARMS = (
    Arm('teacher', 'teacher EDSR', 'demo_teacher_x2', 'sr', seeded=False),
    Arm('teacher_rcan', 'teacher RCAN (MTKD)', 'demo_teacher_rcan_x2', 'sr', seeded=False),
    Arm('teacher_swinir', 'teacher SwinIR (MTKD)', 'demo_teacher_swinir_x2', 'sr', seeded=False),
    Arm('mtkd_stage1', 'MTKD aggregator (stage 1)', 'demo_mtkd_stage1_x2', 'sr', SR_TEACHERS, False, 'teachers'),
    Arm('rest_teacher', 'teacher NAFNet', 'demo_restoration_teacher', 'restoration', seeded=False),
    Arm('pisr_teacher', 'PISR teacher (fed HR)', 'demo_pisr_teacher_x2', 'sr', ('teacher', ), False, 'gt'),
    Arm('scratch', 'from scratch', 'demo_student_scratch_x2', 'sr'),
    Arm('logits', 'Logits KD', 'demo_student_logits_x2', 'sr', ('teacher', )),
    Arm('fitnet', 'FitNet', 'demo_student_fitnet_x2', 'sr', ('teacher', )),
    Arm('at', 'AT', 'demo_student_at_x2', 'sr', ('teacher', )),
    Arm('fakd', 'FAKD', 'demo_student_fakd_x2', 'sr', ('teacher', )),
    Arm('lsfd', 'LSFD', 'demo_student_lsfd_x2', 'sr', ('teacher', )),
    Arm('dukd', 'DUKD', 'demo_student_dukd_x2', 'sr', ('teacher', )),
    Arm('facd', 'FACD', 'demo_student_facd_x2', 'sr', ('teacher', )),
    Arm('fcd', 'FCD', 'demo_student_fcd_x2', 'sr', ('teacher', )),
    Arm('dckd', 'DCKD', 'demo_student_dckd_x2', 'sr', ('teacher', )),
    Arm('dckd_star', 'DCKD*', 'demo_student_dckd_star_x2', 'sr', ('teacher', )),
    Arm('mtkd', 'MTKD', 'demo_student_mtkd_x2', 'sr', (*SR_TEACHERS, 'mtkd_stage1')),
    Arm('mipkd', 'MiPKD', 'demo_student_mipkd_x2', 'sr', ('teacher', )),
    Arm('pisr', 'PISR', 'demo_student_pisr_x2', 'sr', ('pisr_teacher', )),
    Arm('rest_scratch', 'from scratch', 'demo_restoration_scratch', 'restoration'),
    Arm('rest_logits', 'Logits KD', 'demo_restoration_logits', 'restoration', ('rest_teacher', )),
    Arm('wavekd', 'WaveKD', 'demo_restoration_wavekd', 'restoration', ('rest_teacher', )),
    Arm('slkd', 'SLKD', 'demo_restoration_slkd', 'restoration', ('rest_teacher', )),
    Arm('skd', 'SKD', 'demo_restoration_skd', 'restoration', ('rest_teacher', )),
    Arm('dfkd', 'DFKD (data-free)', 'demo_restoration_dfkd', 'restoration', ('rest_teacher', )),
)
ARM = {arm.key: arm for arm in ARMS}
BASELINE = {'sr': ('scratch', 'logits'), 'restoration': ('rest_scratch', 'rest_logits')}  # paired references
TASK_LABEL = {'sr': 'x2 super-resolution', 'restoration': 'denoising'}
METRIC_CHANNELS = {'sr': 'Y', 'restoration': 'RGB'}  # SR papers score Y; denoising (SIDD) scores RGB
# Student iterations of the comparison (the option files say 1,000 and 800, which `make demo` and single runs use):
# with every arm, 3 seeds and two runs at a time, these took 58 minutes on 2 cores (README "Results").
COMPARE_ITERATIONS = {'sr': 600, 'restoration': 500}


@dataclass
class Run:
    arm: Arm
    name: str
    seed: int
    changes: dict


def run_name(arm, seed):
    return f'demo_{arm.key}_seed{seed}' if arm.seeded else load_demo_option(arm.option)['name']


def selected_arms(methods):
    """The arms for ``methods`` (student keys; all when None), their tasks' scratch and Logits students, and every
    teacher they need, in the order of ARMS."""
    keys = set(methods or [arm.key for arm in ARMS if arm.seeded])
    unknown = keys - {arm.key for arm in ARMS if arm.seeded}
    if unknown:
        raise SystemExit(f'--methods: unknown {sorted(unknown)}; the students are '
                         f'{[arm.key for arm in ARMS if arm.seeded]}')
    keys |= {key for arm in ARMS if arm.key in keys for key in BASELINE[arm.task]}
    while True:
        needed = {need for key in keys for need in ARM[key].needs} - keys
        if not needed:
            return [arm for arm in ARMS if arm.key in keys]
        keys |= needed


def plan_runs(arms, args, data):
    """Runs in the order they should start: teachers (the longest chain first), then the students seed by seed (an
    interrupted comparison has whole seeds); ``data`` maps a task to its option changes."""
    common = {'logger:print_freq': args.print_freq}
    runs = []
    for arm in arms:
        if not arm.seeded:
            changes = dict(data[arm.task], **common)
            if args.teacher_iterations:
                changes.update(schedule(args.teacher_iterations))
            runs.append(Run(arm, run_name(arm, 0), 0, changes))
    for seed in args.seeds:
        for arm in arms:
            if arm.seeded:
                opt = load_demo_option(arm.option)
                iterations = args.iterations or COMPARE_ITERATIONS[arm.task]
                changes = {**data[arm.task], **common, **schedule(iterations, opt), 'manual_seed': seed}
                runs.append(Run(arm, run_name(arm, seed), seed, changes))
    return runs


def schedule(iterations, opt=None):
    """Iterations, the cosine period and a training state every quarter (where a stopped run resumes); a DCKD
    history schedule of ``opt`` (rows of (until iteration, every s iterations)) is scaled to the same fractions of
    the run."""
    changes = {'train:total_iter': iterations, 'train:scheduler:periods': [iterations],
               'logger:save_checkpoint_freq': max(iterations // 4, 1)}
    rows = (opt or {}).get('train', {}).get('history', {}).get('update_schedule')
    if rows and iterations != opt['train']['total_iter']:
        ratio = iterations / opt['train']['total_iter']
        changes['train:history:update_schedule'] = [[max(round(until * ratio), 1), max(round(every * ratio), 1)]
                                                    for until, every in rows]
    return changes


def frozen_networks(opt):
    """{network key: weight path} of the frozen networks an option file loads from ``frozen/``."""
    return {key[len('pretrain_'):]: path for key, path in opt['path'].items()
            if key.startswith('pretrain_network_') and isinstance(path, str) and path.startswith(f'{FROZEN_FOLDER}/')}


def prepare_frozen(runs, given, out):
    """Point every ``frozen/`` weight path at the file given for it (``--frozen vqgan=PATH``: the network key
    without ``network_``) or write seeded random weights there before any run starts (runs share them; the option
    files that share a path must describe one network).
    Returns {network key: 'file PATH' | 'random weights (seeded)'} for the table."""
    sources, written = {}, {}
    for run in runs:
        opt = with_changes(load_demo_option(run.arm.option), run.changes)
        for key, path in frozen_networks(opt).items():
            short = key[len('network_'):]
            if short in given:  # the real file has the official layout: a demo shrink (ddconfig) goes
                run.changes[f'path:pretrain_{key}'] = given[short]
                run.changes[key] = {k: v for k, v in opt[key].items() if k != 'ddconfig'}
                sources[short] = f'file {given[short]}'
                continue
            target = os.path.join(out, path)
            if target not in written:  # rewritten by every call: bit-identical while the network stays the same
                written[target] = opt[key]
                torch.manual_seed(0)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                torch.save({'params': build_network(opt[key]).state_dict()}, target)
            elif written[target] != opt[key]:
                raise SystemExit(f'{run.arm.option}.yml: {key} differs from {written[target]} of another option file '
                                 f'that loads the same {path}')
            sources[short] = 'random weights (seeded; no file given)'
    unused = set(given) - set(sources)
    if unused:
        raise SystemExit(f'--frozen {sorted(unused)}: no selected option file loads such a network from frozen/')
    return sources


class Progress:
    """One progress bar over the iterations of all runs, naming the runs in progress."""

    def __init__(self, runs):
        total = sum(with_changes(load_demo_option(run.arm.option), run.changes)['train']['total_iter'] for run in runs)
        self.bar = tqdm(total=total, unit='it', dynamic_ncols=True, smoothing=0.05)
        self.done, self.running = {}, set()

    def __call__(self, run, iteration, total):
        self.running.add(run)
        self.bar.update(iteration - self.done.get(run, 0))
        self.done[run] = iteration
        if iteration >= total:
            self.running.discard(run)
        self.bar.set_postfix_str(', '.join(sorted(self.running)))


def train_runs(runs, args):
    """Train ``runs`` ``--jobs`` at a time, each once the teachers it needs have finished; a failed run does not stop
    the others (those that need it are skipped) and is raised at the end. Returns {run name: seconds/iteration}."""
    names = {run.arm.key: run.name for run in runs if not run.arm.seeded}
    pending, running, finished, failed = list(runs), {}, {}, {}
    progress = Progress(runs)
    with ThreadPoolExecutor(args.jobs) as pool:
        while pending or running:
            for run in list(pending):
                needs = [names[key] for key in run.arm.needs]
                if any(name in failed for name in needs):
                    pending.remove(run)
                    failed[run.name] = f'skipped: needs {[name for name in needs if name in failed]}'
                elif len(running) < args.jobs and all(name in finished for name in needs):
                    pending.remove(run)
                    running[pool.submit(train, run.arm.option, run.name, run.changes, args.out, args.threads,
                                        progress)] = run
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                run = running.pop(job)
                try:
                    finished[run.name] = job.result()
                except Exception as error:  # reported with the others at the end
                    failed[run.name] = str(error)
                    tqdm.write(f'[{run.name}] FAILED: {error}')
    progress.bar.close()
    if failed:
        raise RuntimeError('runs that did not finish (the others are kept; run the command again to resume):\n' +
                           '\n'.join(f'- {name}: {why}' for name, why in failed.items()))
    return finished


def mean_sd(values, digits, sign=''):
    if len(values) == 1:
        return f'{values[0]:{sign}.{digits}f}'
    return f'{statistics.mean(values):{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='one student per method and seed')
    parser.add_argument('--iterations', type=int, default=None,
                        help='iterations (and cosine period) of every student (default: '
                        f'{COMPARE_ITERATIONS}, which fit the hour with every arm and 3 seeds)')
    parser.add_argument('--teacher-iterations', type=int, default=None,
                        help='iterations of every teacher and the MTKD aggregator (default: their option files\')')
    parser.add_argument('--methods', nargs='+', default=None,
                        help='students to train (default all); their scratch/Logits references and teachers follow')
    parser.add_argument('--frozen', nargs='+', default=[], metavar='NET=PATH',
                        help='weights for an untrainable frozen network (vqgan, vgg); otherwise random, seeded')
    parser.add_argument('--jobs', type=int, default=2, help='training runs at a time')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per training run')
    parser.add_argument('--print-freq', type=int, default=50, help='iterations between BasicSR log lines')
    parser.add_argument('--tile-size', type=int, default=96, help='size of the training tiles')
    parser.add_argument('--data', default=os.path.join(ROOT, 'datasets'), help='folder of the demo sets')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo_output', 'compare'), help='runs, table, figures')
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    try:
        args.frozen = dict(item.split('=', 1) for item in args.frozen)
    except ValueError:
        parser.error('--frozen takes NET=PATH items, e.g. --frozen vqgan=weights/vqgan_imagenet_f16_1024.pth')
    missing = {net: path for net, path in args.frozen.items() if not os.path.isfile(path)}
    if missing:
        parser.error(f'--frozen: no such file {missing}')
    args.frozen = {net: os.path.abspath(path) for net, path in args.frozen.items()}
    return args


def prepare_data(args):
    """Build both demo sets and their training tiles; returns {task: option changes for the training folders}."""
    sr_root, rest_root = os.path.join(args.data, 'demo_sr'), os.path.join(args.data, 'demo_restoration')
    build_demo_set(sr_root, scales=(2, ))
    sr_tiles = os.path.join(sr_root, f'train_tiles{args.tile_size}')
    cut_tiles(os.path.join(sr_root, 'train'), sr_tiles, 2, args.tile_size)
    build_demo_restoration_set(rest_root, tile_size=args.tile_size)
    rest_tiles, rest_val = os.path.join(rest_root, tile_folder(args.tile_size)), os.path.join(rest_root, 'val')
    return {'sr': {'datasets:train:dataroot_gt': os.path.join(sr_tiles, 'HR'),
                   'datasets:train:dataroot_lq': os.path.join(sr_tiles, 'LR_bicubic', 'X2')},
            'restoration': {'datasets:train:dataroot_gt': os.path.join(rest_tiles, 'target'),
                            'datasets:train:dataroot_lq': os.path.join(rest_tiles, 'input'),
                            'datasets:val:dataroot_gt': os.path.join(rest_val, 'target'),
                            'datasets:val:dataroot_lq': os.path.join(rest_val, 'input')}}


def validation_pairs(task, args):
    """[(name, RGB float input, BGR uint8 ground truth)] of a task's validation images."""
    if task == 'sr':
        root, inputs, targets = os.path.join(args.data, 'demo_sr', 'val'), os.path.join('LR_bicubic', 'X2'), 'HR'
    else:
        root, inputs, targets = os.path.join(args.data, 'demo_restoration', 'val'), 'input', 'target'
    names = sorted(os.listdir(os.path.join(root, targets)))
    return [(name, read_rgb(os.path.join(root, inputs, name)), cv2.imread(os.path.join(root, targets, name)))
            for name in names]


def predict_all(runs, args):
    """{run name: [BGR uint8 output per validation image]}, and {run name: parameters}; each network is fed what
    its arm says (``Arm.fed``): the MTKD aggregator its teachers' outputs and PISR's teacher the HR image, as in their
    training."""
    names = {run.arm.key: run.name for run in runs if not run.arm.seeded}
    raw, outputs, params = {}, {}, {}
    for run in runs:
        opt = with_changes(load_demo_option(run.arm.option), run.changes)
        net = load_net(opt['network_g'], args.out, run.name)
        params[run.name] = sum(p.numel() for p in net.parameters())
        scale, multiple = opt.get('scale', 1), opt['network_g'].get('window_size') or 1
        pairs = validation_pairs(run.arm.task, args)
        with torch.no_grad():
            if run.arm.fed == 'teachers':
                images = [torch.cat([raw[names[key]][i] for key in SR_TEACHERS], 1) for i in range(len(pairs))]
                raw[run.name] = [net(image) for image in images]
            else:
                fed_gt = run.arm.fed == 'gt'  # the HR image (BGR uint8) in place of the LR input
                images = [img2tensor(gt.astype(np.float32) / 255. if fed_gt else lq, bgr2rgb=fed_gt)[None]
                          for _, lq, gt in pairs]
                raw[run.name] = [forward_padded(net, image, multiple, 1 if fed_gt else scale) for image in images]
        outputs[run.name] = [tensor2img(image.clamp(0, 1)) for image in raw[run.name]]
    return outputs, params


def input_row(task, args):
    """(label, images) of what the networks start from: the bicubic upscaling, or the noisy input."""
    pairs = validation_pairs(task, args)
    if task == 'sr':
        return 'bicubic', [tensor2img(img2tensor(np.clip(imresize(lq, 2), 0, 1), bgr2rgb=False)) for _, lq, _ in pairs]
    return 'noisy input', [tensor2img(img2tensor(lq, bgr2rgb=False)) for _, lq, _ in pairs]


def task_table(task, runs, outputs, params, steps, args):
    """Markdown rows of one task: the input (bicubic or noisy), teachers, then students with paired gains; and the
    students' {(key, seed): (PSNR, SSIM)}."""
    gts, border = [gt for _, _, gt in validation_pairs(task, args)], 2 if task == 'sr' else 0
    first, on = input_row(task, args), METRIC_CHANNELS[task]

    def scores(outputs, targets, border):
        return image_scores(outputs, targets, border, y_channel=on == 'Y')

    lines = [f'### {TASK_LABEL[task]}', '',
             f'| method | parameters | PSNR-{on} (dB) | SSIM-{on} | − scratch, paired (dB) | − Logits KD, paired (dB) '
             '| step (s) | step / scratch step |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    psnr, ssim = scores(first[1], gts, border)
    lines.append(f'| {first[0]} | 0 | {psnr:.2f} | {ssim:.4f} | | | | |')
    for run in runs:
        if run.arm.task == task and not run.arm.seeded:
            psnr, ssim = scores(outputs[run.name], gts, border)
            lines.append(f'| {run.arm.label} | {params[run.name]:,} | {psnr:.2f} | {ssim:.4f} | | | | |')
    seeds = {(run.arm.key, run.seed): run for run in runs if run.arm.seeded}
    metrics = {key: scores(outputs[run.name], gts, border) for key, run in seeds.items()}
    scratch, logits = BASELINE[task]
    for arm in dict.fromkeys(run.arm for run in runs if run.arm.seeded and run.arm.task == task):
        psnr = [metrics[arm.key, s][0] for s in args.seeds]
        ssim = [metrics[arm.key, s][1] for s in args.seeds]
        gains = []
        for reference in (scratch, logits):
            paired = [metrics[arm.key, s][0] - metrics[reference, s][0] for s in args.seeds]
            gains.append('' if arm.key == reference else mean_sd(paired, 2, '+'))
        step = statistics.mean(steps[seeds[arm.key, s].name] for s in args.seeds)
        scratch_step = statistics.mean(steps[seeds[scratch, s].name] for s in args.seeds)
        lines.append(f'| {arm.label} | {params[seeds[arm.key, args.seeds[0]].name]:,} | {mean_sd(psnr, 2)} '
                     f'| {mean_sd(ssim, 4)} | {gains[0]} | {gains[1]} | {step:.3f} | {step / scratch_step:.2f}× |')
    return '\n'.join(lines), metrics


def write_figures(tasks, runs, outputs, metrics, args):
    """gains.png and crops_<task>.png; returns their paths."""
    students = {task: list(dict.fromkeys(run.arm for run in runs if run.arm.seeded and run.arm.task == task))
                for task in tasks}
    paths = [os.path.join(args.out, 'gains.png')]
    gains_plot(tasks, {task: (BASELINE[task][0], [(arm.key, arm.label) for arm in students[task]
                                                  if arm.key != BASELINE[task][0]]) for task in tasks},
               metrics, args.seeds, TASK_LABEL, paths[0])
    for task in tasks:
        pairs = validation_pairs(task, args)
        first = input_row(task, args)
        panels = [(first[0], first[1], False)]
        panels += [(run.arm.label, outputs[run.name], False) for run in runs if run.arm.task == task and
                   not run.arm.seeded]
        panels += [(run.arm.label, outputs[run.name], True) for run in runs if run.arm.task == task and
                   run.arm.seeded and run.seed == args.seeds[0]]
        paths.append(os.path.join(args.out, f'crops_{task}.png'))
        crops_picture(panels, [gt for _, _, gt in pairs], [name for name, _, _ in pairs], TASK_LABEL[task], paths[-1])
    return paths


def main(argv=None):
    args = parse_args(argv)
    arms = selected_arms(args.methods)
    os.makedirs(args.out, exist_ok=True)
    say(f'1/4 demo data in {args.data}')
    data = prepare_data(args)
    runs = plan_runs(arms, args, data)
    frozen = prepare_frozen(runs, args.frozen, args.out)
    say(f'2/4 training {len(runs)} runs ({sum(not run.arm.seeded for run in runs)} teachers; students of seeds '
        f'{args.seeds}), {args.jobs} at a time')
    steps = train_runs(runs, args)
    say('3/4 evaluation on the validation images')
    outputs, params = predict_all(runs, args)
    tasks = list(dict.fromkeys(run.arm.task for run in runs))
    tables, metrics = zip(*(task_table(task, runs, outputs, params, steps, args) for task in tasks))
    say('4/4 figures')
    figures = write_figures(tasks, runs, outputs, dict(zip(tasks, metrics)), args)
    iterations = {run.arm.task: run.changes['train:total_iter'] for run in runs if run.arm.seeded}
    notes = [f'Students: {", ".join(f"{TASK_LABEL[t]} {n:,}" for t, n in iterations.items())} iterations, seeds '
             f'{args.seeds}; ± is the standard deviation over seeds; '
             'gains are differences of PSNR paired by seed (same initial weights and patches). Step: mean seconds '
             'per iteration BasicSR logged, two runs at a time on one thread each.']
    notes += [f'Frozen network `{net}`: {source}.' for net, source in frozen.items()]
    text = '\n\n'.join([*tables, *notes, f'Wall time {time.time() - START:.0f} s.'])
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(f'# Demo comparison\n\n{text}\n')
    print(f'\n{text}\n', flush=True)
    say(f'done: {args.out}/results.md, ' + ', '.join(figures))


if __name__ == '__main__':
    main()
