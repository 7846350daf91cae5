"""The training runs of the CPU demos (``basicsr_kd.demo``, ``basicsr_kd.demo_compare``, ``benchmarks``): an option
file of ``options/demo/`` copied with a run's changes, trained by BasicSR's own ``train.py`` in a subprocess whose
working directory is the demo's output folder, resumed where it stopped, and its EMA weights read back.

A run is finished when ``experiments/<run>/models/net_g_latest.pth`` exists (BasicSR writes it after the last
iteration). Started again with the same option copy, a finished run is kept and a stopped one continues from its
last training state (``--auto_resume``; the runs save one every ``save_checkpoint_freq`` iterations); a run whose
options or whose read weights (a teacher trained again, another frozen file) changed since is trained anew, and says
so.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import torch
import yaml

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from kd_models.kd_eval_model import forward_padded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_OPTIONS = os.path.join(ROOT, 'options', 'demo')
START = time.time()
_print_lock = threading.Lock()


def say(message):
    with _print_lock:
        print(f'[{time.time() - START:5.0f} s] {message}', flush=True)


def load_demo_option(name):
    """The option dict of ``options/demo/<name>.yml``."""
    with open(os.path.join(DEMO_OPTIONS, f'{name}.yml')) as f:
        return yaml.safe_load(f)


def with_changes(opt, changes):
    """A copy of ``opt`` with ``changes`` ({'a:b': value}) applied; every parent key must exist."""
    opt = yaml.safe_load(yaml.safe_dump(opt))
    for key, value in changes.items():
        *parents, leaf = key.split(':')
        node = opt
        for parent in parents:
            if parent not in node:
                raise KeyError(f'{key}: the option file has no "{parent}"')
            node = node[parent]
        node[leaf] = value
    return opt


def checkpoint(out, run):
    return os.path.join(out, 'experiments', run, 'models', 'net_g_latest.pth')


def step_file(out, run):
    return os.path.join(out, 'experiments', run, 'demo_step_seconds.json')


def training_states(out, run):
    folder = os.path.join(out, 'experiments', run, 'training_states')
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted((name for name in names if name.endswith('.state')), key=lambda name: float(name[:-len('.state')]))


def read_step_seconds(out, run):
    """Mean seconds per iteration BasicSR logged for a finished run (``None`` before it finished)."""
    path = step_file(out, run)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)['seconds_per_iteration']


def log_fields(line):
    """(iteration, seconds per iteration) of one of BasicSR's iteration log lines, else None:
    ``[name][epoch:  0, iter:   1,000, lr:(...)] [eta: ..., time (data): 0.125 (0.009)] l_pix: ...``."""
    if '][epoch:' not in line or 'time (data):' not in line:
        return None
    iteration = int(line.split('iter:')[1].split(', lr')[0].strip().replace(',', ''))
    seconds = float(line.split('time (data):')[1].split('(')[0].strip())
    return iteration, seconds


def weights_read(opt, out):
    """Comment lines naming every weight file the run loads (``path.pretrain_*``, relative to ``out``) with a digest
    of its content, appended to the run's option copy: a teacher trained again changes the copy, so its students
    train again instead of being kept."""
    lines = []
    for key, path in sorted(opt.get('path', {}).items()):
        if key.startswith('pretrain_') and isinstance(path, str):
            full = os.path.join(out, path)
            digest = hashlib.sha256(open(full, 'rb').read()).hexdigest()[:16] if os.path.isfile(full) else 'missing'
            lines.append(f'# {key} read: {digest}\n')
    return ''.join(lines)


def train(option, run, changes, out, threads=1, progress=None):
    """Train run ``run`` on ``options/demo/<option>.yml`` with ``changes``; keep it if it finished with these options
    and read weights, resume it if it stopped. ``progress(run, iteration, total)`` is called on each of BasicSR's
    iteration log lines. Returns the run's mean logged seconds per iteration."""
    opt = with_changes(load_demo_option(option), {'name': run, **changes})
    total = opt['train']['total_iter']
    opt_path = os.path.join(out, 'options', f'{run}.yml')
    os.makedirs(os.path.dirname(opt_path), exist_ok=True)
    text = yaml.safe_dump(opt, sort_keys=False) + weights_read(opt, out)
    same = os.path.isfile(opt_path) and open(opt_path).read() == text
    if same and os.path.isfile(checkpoint(out, run)) and os.path.isfile(step_file(out, run)):
        if progress:
            progress(run, total, total)
        return read_step_seconds(out, run)
    resume = same and training_states(out, run)
    if not resume:
        if os.path.isdir(os.path.join(out, 'experiments', run)):
            say(f'[{run}] options, read weights changed or no training state: training anew')
        shutil.rmtree(os.path.join(out, 'experiments', run), ignore_errors=True)
        with open(opt_path, 'w') as f:
            f.write(text)
    say(f'[{run}] {"resuming from " + resume[-1] if resume else "training"} ({total:,} iterations)')
    command = [sys.executable, os.path.join(ROOT, 'train.py'), '-opt', opt_path] + (['--auto_resume'] if resume else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
    log, seconds = [], []
    with subprocess.Popen(command, cwd=out, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          bufsize=1) as proc:
        for line in proc.stdout:
            log.append(line)
            fields = log_fields(line)
            if fields:
                seconds.append(fields[1])
                if progress:
                    progress(run, fields[0], total)
    if proc.returncode != 0 or not os.path.isfile(checkpoint(out, run)):
        raise RuntimeError(f'training {run} failed (exit {proc.returncode}); its last lines:\n{"".join(log[-40:])}')
    # the first logged value includes the start-up; a resumed run keeps what its earlier part logged
    measured = seconds[1:] or seconds
    with open(step_file(out, run), 'w') as f:
        json.dump({'seconds_per_iteration': sum(measured) / len(measured) if measured else None}, f)
    return read_step_seconds(out, run)


def load_net(network_opt, out, run):
    """The network of ``network_opt`` with the EMA weights that BasicSR saved for ``run``."""
    net = build_network(network_opt)
    net.load_state_dict(torch.load(checkpoint(out, run), map_location='cpu', weights_only=True)['params_ema'])
    return net.eval()


def read_rgb(path):
    return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.


def run_net(net, image, scale=1, multiple=1):
    """A BGR uint8 image (as BasicSR's metrics expect) from ``net`` on an RGB float image, the input padded to a
    multiple of ``multiple`` (a SwinIR's window) and the output cropped back."""
    with torch.no_grad():
        lq = img2tensor(image, bgr2rgb=False)[None]
        return tensor2img(forward_padded(net, lq, multiple, scale).clamp(0, 1))


def scores(outputs, targets, border, y_channel=True):
    """Mean PSNR and SSIM over pairs of BGR uint8 images (BasicSR's metrics, ``border`` pixels cropped)."""
    psnr = [calculate_psnr(o, t, crop_border=border, test_y_channel=y_channel) for o, t in zip(outputs, targets)]
    ssim = [calculate_ssim(o, t, crop_border=border, test_y_channel=y_channel) for o, t in zip(outputs, targets)]
    return float(np.mean(psnr)), float(np.mean(ssim))
