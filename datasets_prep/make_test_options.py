"""Write the evaluation option files ``options/test/``: ``test_<stem>.yml`` for every training option file
``options/<stem>.yml`` (its student, ``experiments/<name>/models/net_g_latest.pth``).

The task comes from the training file's name: ``..._x<scale>`` super-resolution, ``..._deblur``, ``..._derain``,
``..._denoise``. Each task is evaluated on the papers' test sets with their metric convention (TASKS below), on the
folders datasets_prep/ writes.

    python -m datasets_prep.make_test_options            # (re)write options/test/
    python -m datasets_prep.make_test_options --check    # exit 1 if options/test/ differs from what this writes
"""
import argparse
import glob
import math
import os
import re
import sys
import textwrap
from collections import namedtuple

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = os.path.join(ROOT, 'options')
TEST_OPTIONS = os.path.join(OPTIONS, 'test')

# convention: the comment line on top; sets: [(name, GT folder, LQ folder)]; y_channel: PSNR/SSIM on Y of YCbCr;
# table_mean: the test sets papers report as one mean (SLKD and SKD, Tab. I; basicsr_kd.results_table --mean), or None
Task = namedtuple('Task', 'convention sets crop_border y_channel table_mean', defaults=(None, ))
SR_SETS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')
# Training files whose network_g is not a student fed the LQ image: MTKD's stage 1 trains the aggregator on the
# teachers' outputs (its validation reports it next to each teacher); PISR's stage 1 trains a teacher fed the GT image
NOT_A_STUDENT = ('KDMTKDAggregationModel', 'KDPISRTeacherModel')
# Super-networks whose student is a slice of network_g (CSD): the test file evaluates the slice as the plain network it
# is, which the training run saves under params (kd_models/kd_csd_model.py)
SUPER_NETWORKS = ('KDSlimmableEDSR', 'KDSlimmableRCAN')


def student_network(network_opt):
    """The options of the student network of a training file's ``network_g``."""
    if network_opt.get('type') not in SUPER_NETWORKS:
        return network_opt
    from kd_archs import kd_csd_arch  # imports torch: only for the files that need it
    return getattr(kd_csd_arch, network_opt['type']).student_options(network_opt)


def sr_task(scale):
    return Task(
        'SR as the papers report it: PSNR/SSIM on the Y channel of YCbCr (DCKD Sec. 4.1, FACD Sec. IV-A; MTKD Sec. 4 '
        f'uses the same benchmarks), {scale} (= scale) border pixels cropped (the convention of EDSR and BasicSR they '
        'compare with), on Set5, Set14, B100 (BSD100), Urban100 and Manga109.',
        [(name, f'datasets/benchmark/{name}/HR', f'datasets/benchmark/{name}/LR_bicubic/X{scale}') for name in SR_SETS],
        scale, True)


def paired(root, names):
    return [(name, f'{root}/{name}/target', f'{root}/{name}/input') for name in names]


TASKS = {
    'deblur':
    Task(
        'Deblurring as the papers report it: PSNR/SSIM on RGB (DCKD Sec. 4.1), no border cropped, on the '
        'GoPro test set (DCKD, SLKD, SKD) and HIDE (SLKD, SKD).',
        [('GoPro', 'datasets/GoPro/test/target', 'datasets/GoPro/test/input'),
         ('HIDE', 'datasets/HIDE/test/target', 'datasets/HIDE/test/input')], 0, False, ('GoPro', 'HIDE')),
    'derain':
    Task(
        'Deraining as the papers report it: PSNR/SSIM on the Y channel of YCbCr (DCKD Sec. 4.1, as '
        'Restormer and DRSformer evaluate), no border cropped, on DCKD\'s Test100, Rain100H, Rain100L, '
        'Test2800 and Test1200 (also SLKD\'s and SKD\'s) and SLKD\'s Rain1400 (prepare_rain13k --rain1400).',
        paired('datasets/Rain13K/test', ('Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200', 'Rain1400')), 0,
        True, ('Rain1400', 'Test1200')),
    'denoise':
    Task(
        'Denoising as the papers report it: PSNR/SSIM on RGB (SLKD and SKD name no colour space; RGB is '
        'how Restormer and Uformer, their teachers, evaluate SIDD), no border cropped, on the 1,280 SIDD '
        'validation blocks.', [('SIDD', 'datasets/SIDD/val/target', 'datasets/SIDD/val/input')], 0, False),
}


def flow(node):
    """``node`` as one line of flow-style YAML."""
    return yaml.safe_dump(node, default_flow_style=True, sort_keys=False, width=math.inf).strip()


def task_of(stem):
    """(task, scale) of a training option file's name."""
    match = re.search(r'_x(\d+)$', stem)
    if match:
        return sr_task(int(match.group(1))), int(match.group(1))
    suffix = stem.rsplit('_', 1)[-1]
    if suffix not in TASKS:
        raise ValueError(f'options/{stem}.yml: cannot tell its task; end its name with _x<scale>, ' +
                         ', '.join(f'_{task}' for task in TASKS))
    return TASKS[suffix], 1


def commented(text, comment):
    return f'{text:<38} # {comment}'


def render(stem, opt, task, scale):
    """The text of the evaluation option file of the student of ``options/<stem>.yml`` (its parsed ``opt``)."""
    name, train = opt['name'], opt.get('train') or {}
    ema = train.get('ema_decay', 0) > 0
    param_key = ('params_ema', 'the EMA weights') if ema else ('params', 'trained without EMA')
    y = 'true' if task.y_channel else 'false'
    source = f'The student of options/{stem}.yml: python test.py -opt options/test/test_{stem}.yml'
    network = student_network(opt['network_g'])
    if network is not opt['network_g']:
        source += (f' (the student_width slice of its super-network {opt["network_g"]["type"]}, saved as '
                   f'{network["type"]})')
    header = [task.convention, source, 'Generated by datasets_prep/make_test_options.py: edit and re-run it.']
    mean = task.table_mean
    if mean is not None:
        header.insert(2, f'SLKD and SKD (Tab. I) report the mean over {" and ".join(mean)}: python -m '
                      f'basicsr_kd.results_table results/{name}/metrics.csv --mean Tab.I={",".join(mean)}')
    lines = [f'# {line}' for text in header for line in textwrap.wrap(text, 118)]
    lines += [
        f'name: {name}',
        'model_type: KDEvalModel',
        f'scale: {scale}',
        'num_gpu: auto',
        'manual_seed: 0',
        '',
        'datasets:',
    ]
    for i, (set_name, gt, lq) in enumerate(task.sets, 1):
        lines += [
            f'  test_{i}:',
            f'    name: {set_name}',
            '    type: PairedImageDataset',
            f'    dataroot_gt: {gt}',
            f'    dataroot_lq: {lq}',
            "    filename_tmpl: '{}'",
            '    io_backend: {type: disk}',
        ]
    lines += [
        '',
        f'network_g: {flow(network)}',
        '',
        'path:',
        commented(f'  pretrain_network_g: experiments/{name}/models/net_g_latest.pth', 'train.py saves it here'),
        commented(f'  param_key_g: {param_key[0]}', param_key[1]),
        '  strict_load_g: true',
        '',
        'val:',
        commented('  save_img: true', 'results/<name>/visualization/<dataset>/'),
        '  suffix: ~',
        '  pbar: true',
        commented('  tile: ~', 'e.g. {size: 256, overlap: 32} (LQ pixels) for images too large at once'),
        commented('  pad_multiple: ~', '~: network_g.window_size, if it has one'),
    ]
    if train.get('pixel_range'):  # KDSKDModel's: the range the student takes its input and gives its output in
        lines.append(commented(f"  pixel_range: '{train['pixel_range']}'", "the student's train.pixel_range (checked)"))
    lines += [
        '  metrics:',
        f'    psnr: {{type: calculate_psnr, crop_border: {task.crop_border}, test_y_channel: {y}}}',
        f'    ssim: {{type: calculate_ssim, crop_border: {task.crop_border}, test_y_channel: {y}}}',
    ]
    return '\n'.join(lines) + '\n'


def render_all(options=OPTIONS):
    """``{file name: text}`` of every evaluation option file."""
    files = {}
    for path in sorted(glob.glob(os.path.join(options, '*.yml'))):
        stem = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            opt = yaml.safe_load(f)
        if opt['model_type'] in NOT_A_STUDENT:
            continue
        task, scale = task_of(stem)
        if opt.get('scale', 1) != scale:
            raise ValueError(f'options/{stem}.yml: scale = {opt.get("scale")} but its name says {scale}')
        files[f'test_{stem}.yml'] = render(stem, opt, task, scale)
    return files


def committed_files(folder=TEST_OPTIONS):
    """``{file name: text}`` of the files in options/test/."""
    files = {}
    for path in sorted(glob.glob(os.path.join(folder, '*.yml'))):
        with open(path) as f:
            files[os.path.basename(path)] = f.read()
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='only compare with options/test/; exit 1 if they differ')
    args = parser.parse_args(argv)
    files = render_all()
    committed = committed_files()
    strays = sorted(set(committed) - set(files))
    for name in strays:
        print(f'options/test/{name}: not written by make_test_options.py (its training option file is gone?)')
    if args.check:
        differ = [name for name, text in files.items() if committed.get(name) != text]
        for name in differ:
            print(f'options/test/{name}: differs from what make_test_options.py writes')
        print(f'options/test/: {len(files) - len(differ)} of {len(files)} files up to date')
        return 1 if differ or strays else 0
    os.makedirs(TEST_OPTIONS, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(TEST_OPTIONS, name), 'w') as f:
            f.write(text)
    print(f'wrote {len(files)} files in {TEST_OPTIONS}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
