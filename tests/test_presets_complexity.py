"""Presets (kd_archs/kd_presets.yml) and the complexity report (benchmarks/complexity.py): parameter counts against
the recorded and the official-spec numbers, FLOPs against hand counts, the Markdown tables."""
import json
import os

import pytest
import torch
from torch import nn

import kd_archs  # noqa: F401  (registers our networks)
from basicsr.archs import build_network
from benchmarks.complexity import COLUMNS, count_flops, input_shape, main, parameters_and_flops, presets_markdown
from conftest import ARCH_SPECS
from kd_archs.presets import build_preset, load_presets, preset_network

PRESETS = load_presets()
PAPERS = {'DCKD', 'MTKD', 'FACD', 'SLKD', 'SKD'}


def parameter_count(net_opt):
    """Parameters of the network, built on the meta device where it can be (no initialisation: fast)."""
    try:
        with torch.device('meta'):
            net = build_network(net_opt)
    except RuntimeError:  # SwinIR calls .item() while it builds
        net = build_network(net_opt)
    return sum(param.numel() for param in net.parameters())


@pytest.mark.parametrize('name', list(PRESETS))
def test_preset_parameter_count_equals_the_recorded_and_the_spec_count(name):
    preset = PRESETS[name]
    assert parameter_count(preset['network_g']) == preset['params']
    if 'spec' in preset:
        with open(os.path.join(ARCH_SPECS, f'{preset["spec"]}.json')) as f:
            spec = json.load(f)
        assert preset['params'] == spec['num_params']


def test_presets_cover_the_papers_tables():
    cited = {(entry['paper'], entry['table']) for preset in PRESETS.values() for entry in preset['papers']}
    assert {paper for paper, _ in cited} == PAPERS
    assert {('DCKD', 'Tab. 1'), ('MTKD', 'Tab. 1'), ('FACD', 'Tab. 1'), ('SLKD', 'Tab. I'), ('SKD', '§III-A')} <= cited
    # every printed count: DCKD 8, MTKD 6, FACD 4, SLKD 6 (+1: the denoising teacher shares Restormer's 26.1M)
    printed = [entry['paper'] for preset in PRESETS.values() for entry in preset['papers'] if entry['params_m']]
    assert {paper: printed.count(paper) for paper in PAPERS} == {'DCKD': 8, 'MTKD': 6, 'FACD': 4, 'SLKD': 7, 'SKD': 0}
    for name, preset in PRESETS.items():  # a count more than 2% away from the paper's must be explained
        far = [e for e in preset['papers'] if e['params_m'] and abs(preset['params'] / 1e6 / e['params_m'] - 1) > 0.02]
        assert not far or preset.get('note'), name


def test_build_preset_and_overrides():
    net = build_preset('edsr_student_x2', num_block=2)
    assert len(net.body) == 2 and net.conv_first.out_channels == 64
    assert preset_network('rcan_teacher_x4') == PRESETS['rcan_teacher_x4']['network_g']
    with pytest.raises(KeyError, match='No preset "rcan_x4".*rcan_teacher_x4'):
        build_preset('rcan_x4')


def test_flop_count_of_a_tiny_network_equals_the_hand_count():

    class Attention(nn.Module):

        def __init__(self):
            super().__init__()
            self.qk = nn.Linear(4, 6)

        def forward(self, x):  # x: (b, n, 4) -> q, k: (b, n, 3) -> (b, n, n)
            q, k = self.qk(x).chunk(2, dim=-1)
            return q @ k.transpose(1, 2)

    convs = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.ConvTranspose2d(4, 2, 2, stride=2))
    b, h, w = 2, 10, 12
    macs = b * h * w * (8 * 3 * 9 + 4 * 8 + 4 * 2 * 9 + 2 * 4 * 4)  # out x in/groups x kernel per position
    assert count_flops(convs, torch.rand(b, 3, h, w)) == 2 * macs
    n = 7
    assert count_flops(Attention(), torch.rand(b, n, 4)) == 2 * (b * n * 4 * 6 + b * n * n * 3)


def test_input_size_is_the_output_size_over_the_scale_in_whole_windows():
    assert input_shape(PRESETS['edsr_teacher_x4']['network_g'], 512) == (1, 3, 128, 128)
    assert input_shape(PRESETS['restormer_teacher']['network_g'], 512) == (1, 3, 512, 512)
    assert input_shape(PRESETS['swinir_teacher_x3']['network_g'], 512) == (1, 3, 168, 168)  # 170 -> windows of 8


def test_flops_are_counted_on_meta_and_real_errors_surface():
    params, flops, counted_on = parameters_and_flops(PRESETS['restormer_student_slkd']['network_g'], (1, 3, 32, 32))
    assert (params, counted_on) == (PRESETS['restormer_student_slkd']['params'], 'meta') and flops > 0
    with pytest.raises(RuntimeError):  # SwinIR does not pad: a side of 12 is no multiple of its windows of 8
        parameters_and_flops(PRESETS['swinir_student_light_x2']['network_g'], (1, 3, 12, 12))


def test_report_of_a_small_preset_has_the_columns_and_the_hand_counted_flops(capsys):
    main(['--preset', 'edsr_student_x2', '--size', '16', '--runs', '1', '--warmup', '0', '--threads', '1'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3] == '| ' + ' | '.join(COLUMNS) + ' |'
    row = dict(zip(COLUMNS, (cell.strip() for cell in lines[-1].strip('|').split('|'))))
    # EDSR 64 channels x 16 blocks, x2, input 8 x 8: conv_first, 32 body convs and conv_after_body at 8 x 8, the
    # upsampling conv (64 -> 256) at 8 x 8, conv_last (64 -> 3) at 16 x 16
    macs = 64 * (3 * 9 * 64 + 33 * 64 * 9 * 64 + 256 * 9 * 64) + 256 * 3 * 9 * 64
    assert row['GFLOPs'] == f'{2 * macs / 1e9:.2f}' and row['GMACs'] == f'{macs / 1e9:.2f}'
    assert (row['preset'], row['arch'], row['input'], row['params (M)'],
            row['counted on']) == ('edsr_student_x2', 'EDSR', '8x8', '1.37', 'meta')
    assert float(row['latency (ms)']) > 0 and row['paper G'] == '–'

    main(['--preset', 'restormer_student_slkd', '--size', '16', '--no-latency'])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert '| 85.00 | – | meta |' in row  # SLKD's printed 85.0G (at 512 x 512); no latency


def test_preset_table_puts_our_count_beside_the_papers():
    table, notes = presets_markdown(PRESETS).split('\n\n')
    rows = {line.split(' | ')[0].strip('| ').split(' [')[0]: line for line in table.splitlines()[2:]}
    assert list(rows) == list(PRESETS)
    assert '| 15.59 | DCKD Tab. 1: 15.6; MTKD Tab. 1: 15.6; FACD Tab. 1: 15.59 | -0.01; -0.01; +0.00 |' in rows[
        'rcan_teacher_x4']
    assert rows['drsformer_student_slkd'].endswith('| 4.75 | SLKD Tab. I: 4.6 | +0.15 |')
    assert rows['restormer_student_skd'].endswith('| 6.23 | SKD §III-A | – |')
    assert 'num_blocks: [2, 2, 2, 4]' in rows['drsformer_student_slkd']
    numbered = [name for name in PRESETS if PRESETS[name].get('note')]
    assert [line.split('`')[1] for line in notes.splitlines()] == numbered


def test_command_line_refuses_unknown_presets_and_empty_requests(capsys):
    for argv in (['--preset', 'edsr_x4'], []):
        with pytest.raises(SystemExit):
            main(argv)
    assert 'edsr_teacher_x4' in capsys.readouterr().err
