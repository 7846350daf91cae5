"""Parameters, FLOPs and latency of the presets (``kd_archs/kd_presets.yml``), as Markdown tables.

- Size: ``--size`` is the side of the output image (default 512: the papers report 512 x 512); a network with
  ``upscale`` s (SR) gets an input of side ``size // s``, a restoration network one of side ``size``. Batch 1, RGB.
- FLOPs: counted exactly by torch's ``FlopCounterMode`` over one forward under ``no_grad``, on the meta device
  (shapes only: no memory, no time) when the network runs there, otherwise on real tensors. It counts 2 FLOPs per
  multiply-accumulate of every convolution and matrix product (attention included); biases, normalisations,
  activations and other element-wise operations are not counted. ``GMACs`` = GFLOPs / 2: the papers' "FLOPs"
  (``paper G``, SLKD Tab. I) are by convention multiply-accumulates, so compare those two columns.
- Latency: median of ``--runs`` forwards (after ``--warmup``) under ``no_grad`` on ``--device``, in milliseconds,
  with ``--threads`` CPU threads; ``--no-latency`` skips it (the big presets at 512 x 512 take seconds per forward
  on a CPU).

Usage (from the repository root)::

    python -m benchmarks.complexity --preset restormer_teacher --preset restormer_student_slkd
    python -m benchmarks.complexity --all --no-latency
    python -m benchmarks.complexity --markdown-presets      # the README table: our counts beside the papers'
"""
import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from kd_archs.presets import PRESETS_FILE, load_presets

COLUMNS = ['preset', 'arch', 'input', 'params (M)', 'GFLOPs', 'GMACs', 'paper G', 'latency (ms)', 'counted on']


def count_flops(net, x):
    """FLOPs (2 per multiply-accumulate) of ``net(x)``, counted by FlopCounterMode under no_grad."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops()


def input_shape(net_opt, size):
    """(1, 3, side, side): the input that gives a ``size`` x ``size`` output, its side rounded down to a multiple
    of ``window_size`` for networks that have one (BasicSR's SwinIR does not pad its input)."""
    side = size // net_opt.get('upscale', 1)
    side -= side % net_opt.get('window_size', 1)
    return 1, 3, side, side


def parameters_and_flops(net_opt, shape):
    """Parameter count, FLOPs and where they were counted ('meta', or 'cpu' if the network cannot run on meta)."""
    net = build_network(net_opt).eval()
    params = sum(p.numel() for p in net.parameters())
    try:
        return params, count_flops(net.to('meta'), torch.empty(shape, device='meta')), 'meta'
    except Exception:  # no meta kernel, or a tensor kept outside the module: count on real tensors
        return params, count_flops(build_network(net_opt).eval(), torch.rand(shape)), 'cpu'


def latency_ms(net_opt, shape, device, runs, warmup):
    """Median forward time in milliseconds over ``runs`` forwards after ``warmup`` ones."""
    net = build_network(net_opt).eval().to(device)
    x = torch.rand(shape, device=device)
    times = []
    with torch.no_grad():
        for index in range(warmup + runs):
            start = time.perf_counter()
            net(x)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def paper_gflops(preset):
    """The first FLOP count a paper prints for this preset, or None."""
    return next((entry['gflops'] for entry in preset['papers'] if entry.get('gflops') is not None), None)


def measure(name, preset, size, device='cpu', runs=5, warmup=2, latency=True):
    """One row of the complexity table for preset ``name``."""
    net_opt = preset['network_g']
    shape = input_shape(net_opt, size)
    params, flops, counted_on = parameters_and_flops(net_opt, shape)
    return {
        'preset': name,
        'arch': net_opt['type'],
        'input': f'{shape[2]}x{shape[3]}',
        'params (M)': params / 1e6,
        'GFLOPs': flops / 1e9,
        'GMACs': flops / 2e9,
        'paper G': paper_gflops(preset),
        'latency (ms)': latency_ms(net_opt, shape, device, runs, warmup) if latency else None,
        'counted on': counted_on
    }


def markdown_table(columns, rows):
    """A Markdown table; floats with 2 decimals, None as '–'."""

    def cell(value):
        if value is None:
            return '–'
        return f'{value:.2f}' if isinstance(value, float) else str(value)

    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(row[column]) for column in columns) + ' |' for row in rows]
    return '\n'.join(lines)


def flow(value):
    """A value in YAML flow style, as in the option files (``[4, 6, 6, 8]``, ``1conv``, ``0.1``)."""
    if isinstance(value, dict):
        return ', '.join(f'{key}: {flow(item)}' for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(flow(item) for item in value) + ']'
    return str(value).lower() if isinstance(value, bool) else str(value)


def presets_markdown(presets):
    """The preset table of the README: our parameter count beside each paper's, and the notes below it."""
    columns = ['preset', 'arch', 'kwargs', 'params (M)', 'paper (M)', 'delta (M)']
    rows, notes = [], []
    for name, preset in presets.items():
        kwargs = {key: value for key, value in preset['network_g'].items() if key != 'type'}
        ours = preset['params'] / 1e6
        printed = [entry for entry in preset['papers'] if entry.get('params_m') is not None]
        papers = '; '.join(f'{entry["paper"]} {entry["table"]}' + (f': {entry["params_m"]}' if entry in printed else '')
                           for entry in preset['papers'])
        label = name
        if preset.get('note'):
            notes.append(f'{len(notes) + 1}. `{name}`: {preset["note"]}')
            label = f'{name} [{len(notes)}]'
        rows.append({
            'preset': label,
            'arch': preset['network_g']['type'],
            'kwargs': flow(kwargs),
            'params (M)': f'{ours:.2f}',
            'paper (M)': papers,
            'delta (M)': '; '.join(f'{ours - entry["params_m"]:+.2f}' for entry in printed) or None
        })
    return markdown_table(columns, rows) + '\n\n' + '\n'.join(notes)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', action='append', default=[], help='a preset of kd_presets.yml (repeatable)')
    parser.add_argument('--all', action='store_true', help='every preset')
    parser.add_argument('--size', type=int, default=512, help='side of the output image (SR input: size // scale)')
    parser.add_argument('--runs', type=int, default=5, help='timed forwards (median)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed forwards first')
    parser.add_argument('--threads', type=int, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i] for the latency')
    parser.add_argument('--no-latency', action='store_true', help='parameters and FLOPs only')
    parser.add_argument('--markdown-presets', action='store_true', help='print the README preset table and exit')
    args = parser.parse_args(argv)
    presets = load_presets()
    if not (args.markdown_presets or args.all or args.preset):
        parser.error('give --preset NAME (repeatable), --all or --markdown-presets')
    unknown = [name for name in args.preset if name not in presets]
    if unknown:
        parser.error(f'unknown preset(s) {unknown}; {PRESETS_FILE} has: {", ".join(presets)}')
    return args, presets


def main(argv=None):
    args, presets = parse_args(argv)
    if args.markdown_presets:
        print(presets_markdown(presets))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(presets) if args.all else args.preset
    rows = [
        measure(name, presets[name], args.size, args.device, args.runs, args.warmup, not args.no_latency)
        for name in names
    ]
    print(f'Output {args.size}x{args.size}, batch 1, {args.device}, {torch.get_num_threads()} threads '
          f'(GFLOPs: 2 per multiply-accumulate; GMACs comparable to the papers\' "FLOPs")\n')
    print(markdown_table(COLUMNS, rows))


if __name__ == '__main__':
    main()
