"""What a distillation step costs, per method, next to a plain student step of the same student.

For each option file, a child process builds the model as ``train.py`` would (real classes and losses; random
weights for the frozen networks, saved to a temporary file so the strict loading path runs), feeds synthetic batches
and times, after warm-up steps:

- ``kd``: one ``optimize_parameters`` of the distillation model;
- ``plain``: one step of the same student with ``SRModel`` and L1 to GT, same batch and patch, same process;
- ``floor``: ``plain`` + the frozen forwards the method needs at least (``model.floor_forwards()``), each timed on
  its own under no_grad.

It reports the medians (and the spread: max - min) of each, ``kd / plain``, ``kd / floor`` and the peak memory
(CUDA: ``max_memory_allocated``; CPU: peak RSS of the child process). Add a method by adding its option file to
``DEFAULT_OPTIONS`` (or pass files on the command line).

Usage: ``python benchmarks/kd_step.py [options/...yml ...] [--batch 2 --patch 24 --steps 5 --device cpu]``
"""
import argparse
import copy
import csv
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OPTIONS = ['options/logits_edsr_x4.yml', 'options/fitnet_edsr_x4.yml', 'options/at_edsr_x4.yml',
                   'options/fakd_edsr_x4.yml', 'options/facd_edsr_x4.yml', 'options/dckd_swinir_x2.yml',
                   'options/dckd_star_swinir_x4.yml', 'options/skd_restormer_derain.yml', 'options/mtkd_edsr_x4.yml',
                   'options/wavekd_restormer_derain.yml', 'options/lsfd_edsr_x4.yml', 'options/dukd_rcan_x3.yml',
                   'options/csd_edsr_x4.yml', 'options/dfkd_restormer_derain.yml', 'options/pisr_edsr_x4.yml',
                   'options/mipkd_rcan_x4.yml']
COLUMNS = ['option', 'model_type', 'kd_ms', 'kd_spread_ms', 'plain_ms', 'plain_spread_ms', 'frozen_ms', 'floor_ms',
           'kd_over_plain', 'kd_over_floor', 'peak_mem_mb']


def summarize(option, model_type, kd, plain, frozen, peak_mem_mb):
    """One table row from lists of step times in seconds (``frozen``: name -> list of forward times)."""
    kd_ms, plain_ms = 1e3 * statistics.median(kd), 1e3 * statistics.median(plain)
    frozen_ms = sum(1e3 * statistics.median(times) for times in frozen.values())
    return {
        'option': option, 'model_type': model_type, 'kd_ms': kd_ms, 'kd_spread_ms': 1e3 * (max(kd) - min(kd)),
        'plain_ms': plain_ms, 'plain_spread_ms': 1e3 * (max(plain) - min(plain)), 'frozen_ms': frozen_ms,
        'floor_ms': plain_ms + frozen_ms, 'kd_over_plain': kd_ms / plain_ms,
        'kd_over_floor': kd_ms / (plain_ms + frozen_ms),
        'peak_mem_mb': peak_mem_mb
    }


def markdown(rows):
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for row in rows:
        cells = [f'{row[c]:.2f}' if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def timed(fn, device, steps, warmup):
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup`` calls."""
    import torch
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def training_opt(opt, workdir, device, amp, patch):
    """The option dict as train.py would parse it, with random-weight files for the frozen networks."""
    from basicsr.utils.registry import MODEL_REGISTRY
    from basicsr_kd.parsed_options import parsed_options
    opt = copy.deepcopy(opt)
    opt.pop('datasets', None)
    MODEL_REGISTRY.get(opt['model_type']).write_random_frozen_files(opt, workdir)
    opt = parsed_options(opt, workdir, num_gpu=int(device == 'cuda'))
    opt['train']['teacher_autocast'] = amp
    opt['train'].pop('progressive_patches', None)  # the benchmark's batch has the patch and batch sizes it times
    if 'network_gen' in opt:  # DFKD's generator makes the student's inputs: at the timed patch size
        opt['network_gen']['img_size'] = patch
    return opt


def cached_training_opt(opt, workdir, build_model):
    """``opt`` taking its targets from a cache (``train.teacher_cache``) whose manifest is made for it in ``workdir``
    (the targets themselves come with the synthetic batch)."""
    from datasets_prep.cache_teacher_outputs import write_manifest
    opt = copy.deepcopy(opt)
    opt['datasets'] = {'train': {'type': 'KDCachedTargetDataset', 'dataroot_lq': workdir, 'dataroot_target': workdir}}
    write_manifest(workdir, build_model(copy.deepcopy(opt)).cache_manifest(), overwrite=True)
    opt['train']['teacher_cache'] = workdir
    return opt


def plain_opt(opt):
    """The same student, batch and patch with SRModel and L1 to GT."""
    keep = ('name', 'scale', 'num_gpu', 'manual_seed', 'is_train', 'dist', 'rank', 'world_size', 'auto_resume',
            'network_g')
    plain = {k: copy.deepcopy(v) for k, v in opt.items() if k in keep}
    plain.update(model_type='SRModel', path={k: opt['path'][k] for k in ('models', 'training_states', 'log')})
    plain['train'] = {k: copy.deepcopy(opt['train'][k]) for k in ('optim_g', 'scheduler', 'total_iter')}
    plain['train'].update(ema_decay=opt['train'].get('ema_decay', 0), pixel_opt={'type': 'L1Loss', 'loss_weight': 1.0})
    return plain


def measure(option, args):
    """Child process: time one option; return its table row."""
    import torch
    import yaml
    sys.path.insert(0, ROOT)
    from basicsr_kd.compat import patch_basicsr
    from basicsr_kd.registration import register_plugin
    register_plugin()
    patch_basicsr()
    from basicsr.models import build_model
    torch.set_num_threads(args.threads or torch.get_num_threads())
    with open(os.path.join(ROOT, option)) as f:
        opt = yaml.safe_load(f)
    scale = opt['scale']
    generator = torch.Generator().manual_seed(0)
    batch = {
        'lq': torch.rand(args.batch, 3, args.patch, args.patch, generator=generator),
        'gt': torch.rand(args.batch, 3, args.patch * scale, args.patch * scale, generator=generator)
    }
    with tempfile.TemporaryDirectory() as workdir:
        opt = training_opt(opt, workdir, args.device, args.amp, args.patch)
        plain = build_model(plain_opt(opt))
        plain.feed_data(batch)
        plain_times = timed(functools.partial(plain.optimize_parameters, 1), args.device, args.steps, args.warmup)
        del plain
        if args.cached:
            opt = cached_training_opt(opt, workdir, build_model)
            batch['target'] = torch.rand(batch['gt'].shape, generator=generator)
        model = build_model(opt)
    model.feed_data(batch)
    kd_times = timed(lambda: model.optimize_parameters(1), args.device, args.steps, args.warmup)
    frozen = {}
    for index, (name, inputs) in enumerate(model.floor_forwards()):
        frozen[f'{index}:{name}'] = timed(lambda name=name, inputs=inputs: model.run_frozen(name, inputs), args.device,
                                          args.steps, args.warmup)
    if args.device == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return summarize(option + (' (cache)' if args.cached else ''), opt['model_type'], kd_times, plain_times, frozen,
                     peak)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('options', nargs='*', default=DEFAULT_OPTIONS, help='option files (relative to the repo)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--patch', type=int, default=24, help='LR patch size')
    parser.add_argument('--steps', type=int, default=5, help='timed steps')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--amp', choices=['bf16', 'fp16'], default=None, help='frozen forwards under autocast (CUDA)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    parser.add_argument('--out', default='benchmark_results', help='folder for kd_step.csv and kd_step.json')
    parser.add_argument('--cache', action='store_true', help='also measure each option with train.teacher_cache')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--cached', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.options[0], args)))
        return
    rows = []
    for option, cached in [(o, c) for o in args.options for c in ((False, True) if args.cache else (False, ))]:
        print(f'measuring {option}{" with the cache" if cached else ""} ...', flush=True)
        passed = [f'--{k}={v}' for k, v in vars(args).items()
                  if k not in ('options', 'child', 'out', 'cache', 'cached') and v is not None]
        command = [sys.executable, os.path.abspath(__file__), option, '--child', *passed] + ['--cached'] * cached
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f'{option} failed:\n{result.stderr[-3000:]}')
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    table = markdown(rows)
    print(f'\nbatch {args.batch}, LR patch {args.patch}, device {args.device}, amp {args.amp}, '
          f'{args.steps} timed steps after {args.warmup}\n\n{table}')
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'kd_step.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out, 'kd_step.json'), 'w') as f:
        json.dump({'settings': {k: v for k, v in vars(args).items() if k != 'child'}, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
