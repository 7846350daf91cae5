"""Metric tables as Markdown and CSV: one run's ``metrics.csv`` (written by KDEvalModel), and several runs merged
into one table like the papers' (rows: methods, columns: dataset x metric).

    python -m basicsr_kd.results_table results/*_edsr_x4/metrics.csv --out results/edsr_x4
    python -m basicsr_kd.results_table results/skd_*_derain/metrics.csv --mean Tab.I=Rain1400,Test1200

``--mean LABEL=SET1,SET2`` adds, per metric, the unweighted mean over those test sets (SLKD's and SKD's Tab. I
report deraining as the mean over Rain1400 and Test1200, deblurring over GoPro and HIDE). A run is named by the
folder of its ``metrics.csv`` (``results/<name>/``, the option file's ``name``).
"""
import argparse
import csv
import os
from collections import OrderedDict

from kd_models.kd_eval_model import write_table


def read_metrics(path):
    """``{dataset: {metric: value}}`` of a run's metrics.csv."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or reader.fieldnames[0] != 'dataset':
            raise ValueError(f'{path}: not a metrics.csv of KDEvalModel (its first column must be "dataset")')
        return OrderedDict((row['dataset'], {
            metric: float(row[metric]) if row[metric] else None
            for metric in reader.fieldnames[1:]
        }) for row in reader)


def merge_runs(paths):
    """Merge runs' metrics.csv files: (header, rows) with a row per run and a column per dataset x metric, in the
    order they first appear."""
    runs = OrderedDict()
    for path in paths:
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if name in runs:
            raise ValueError(f'{path}: a second run named "{name}" (each metrics.csv must sit in its run\'s folder)')
        runs[name] = read_metrics(path)
    columns = list(
        OrderedDict.fromkeys(
            (dataset, metric) for run in runs.values() for dataset, metrics in run.items() for metric in metrics))
    header = ['method'] + [f'{dataset} {metric}' for dataset, metric in columns]
    rows = [[name] + [run.get(dataset, {}).get(metric) for dataset, metric in columns] for name, run in runs.items()]
    return header, rows


def parse_mean(text):
    """``LABEL=SET1,SET2`` as (label, [sets])."""
    label, _, sets = text.partition('=')
    names = [name for name in sets.split(',') if name]
    if not label or len(names) < 2:
        raise ValueError(f'--mean {text}: write LABEL=SET1,SET2[,...] (at least two test sets)')
    return label, names


def add_means(header, rows, means):
    """Append to (header, rows) of ``merge_runs`` a column ``<label> <metric>`` per mean and per metric that every
    set of the mean has: the unweighted mean of the sets' values (empty where a run lacks one of them)."""
    header, rows = list(header), [list(row) for row in rows]
    for label, sets in means:
        missing = [name for name in sets if not any(column.startswith(f'{name} ') for column in header[1:])]
        if missing:
            raise ValueError(f'--mean {label}: no run has the test set(s) {missing}')
        metrics = list(OrderedDict.fromkeys(column.split(' ', 1)[1] for column in header[1:]))
        for metric in metrics:
            columns = [header.index(f'{name} {metric}') for name in sets if f'{name} {metric}' in header]
            if len(columns) != len(sets):
                continue
            header.append(f'{label} {metric}')
            for row in rows:
                values = [row[column] for column in columns]
                row.append(None if None in values else sum(values) / len(values))
    return header, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('metrics', nargs='+', help='metrics.csv files of the runs (results/<name>/metrics.csv)')
    parser.add_argument('--mean', action='append', default=[], metavar='LABEL=SET1,SET2',
                        help='add the mean of these test sets per metric (repeatable)')
    parser.add_argument('--out', default='results/table', help='writes <out>.md and <out>.csv (default: %(default)s)')
    args = parser.parse_args(argv)
    missing = [path for path in args.metrics if not os.path.isfile(path)]
    if missing:
        parser.error(f'no such file: {", ".join(missing)} (test.py writes results/<name>/metrics.csv)')
    try:
        means = [parse_mean(text) for text in args.mean]
    except ValueError as error:
        parser.error(str(error))
    header, rows = add_means(*merge_runs(args.metrics), means)
    print(write_table(args.out, header, rows), end='')
    print(f'written: {args.out}.md, {args.out}.csv')


if __name__ == '__main__':
    main()
