"""benchmarks/kd_step.py: the ratio arithmetic, and a 1-step run on a tiny option file."""
import csv
import os
import subprocess
import sys

import pytest
import yaml

from benchmarks.kd_step import COLUMNS, summarize
from conftest import OPTIONS, ROOT, load_option, shrink_option


def test_ratios_on_fixed_timings():
    row = summarize('x.yml', 'KDLogitsModel', kd=[0.30, 0.20, 0.25], plain=[0.10, 0.12, 0.08],
                    frozen={'t': [0.04, 0.05, 0.06], 'vgg': [0.01, 0.01, 0.02]}, peak_mem_mb=12.0)
    assert row['kd_ms'] == pytest.approx(250) and row['kd_spread_ms'] == pytest.approx(100)
    assert row['plain_ms'] == pytest.approx(100) and row['plain_spread_ms'] == pytest.approx(40)
    assert row['frozen_ms'] == pytest.approx(60) and row['floor_ms'] == pytest.approx(160)
    assert row['kd_over_plain'] == pytest.approx(2.5) and row['kd_over_floor'] == pytest.approx(250 / 160)
    assert list(row) == COLUMNS


@pytest.mark.parametrize('option, model_type', [('fitnet_edsr_x2.yml', 'KDFeatureModel'),
                                                ('csd_edsr_x2.yml', 'KDCSDModel'),
                                                ('dfkd_restormer_derain.yml', 'KDDFKDModel'),
                                                ('pisr_edsr_x2.yml', 'KDPISRStudentModel'),
                                                ('mipkd_rcan_x2.yml', 'KDMiPKDModel')],
                         ids=['fitnet', 'csd', 'dfkd', 'pisr', 'mipkd'])
def test_one_step_run_writes_the_table(demo_root, tmp_path, option, model_type):
    opt = shrink_option(load_option(os.path.join(OPTIONS, option)), demo_root, str(tmp_path), 'bench')
    path = tmp_path / 'bench.yml'
    path.write_text(yaml.safe_dump(opt))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'kd_step.py'), str(path), '--steps', '1',
                             '--warmup', '0', '--batch', '1', '--patch', '8', '--threads', '1', '--out', str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '| option | model_type | kd_ms |' in result.stdout
    with open(tmp_path / 'kd_step.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0]) == COLUMNS and rows[0]['model_type'] == model_type
    assert all(float(rows[0][c]) > 0 for c in COLUMNS if c not in ('option', 'model_type') and 'spread' not in c)
