"""Check and lay out the deraining sets: the Rain13K training pairs and the test sets Rain100H, Rain100L, Test100,
Test1200 and Test2800, as the MPRNet/Restormer/DRSformer download arranges them.

Expects Restormer's deraining archives (train.zip and test.zip, Google Drive links in
https://github.com/swz30/Restormer/blob/main/Deraining/download_data.py) unpacked in --src:

    <src>/train/Rain13K/{input,target}/<name>     13,712 pairs (the download holds 13,711: swz30/MPRNet#74)
    <src>/test/<set>/{input,target}/<name>        Rain100H 100, Rain100L 100, Test100 100 (the download holds 98,
                                                  as MSPFN used: swz30/MPRNet#23), Test1200 1,200, Test2800 2,800

Input and target images pair by file name, as BasicSR's PairedImageDataset reads them: images without a partner are
listed and stop the run (--drop-unpaired leaves them out instead). Every set is checked before anything is written.

Writes (hard links where the file system allows, else copies; a re-run writes only what is missing):

    <out>/train/{input,target}/<name>
    <out>/test/<set>/{input,target}/<name>

Example: python -m datasets_prep.prepare_rain13k --src downloads/Deraining/Datasets --out datasets/Rain13K
"""
import os

from datasets_prep.common import check_count, image_paths, link_pairs, make_parser, pair_files, run

SETS = ('Rain13K', 'Rain100H', 'Rain100L', 'Test100', 'Test1200', 'Test2800')


def prepare(args):
    found = {}
    for name in args.sets:
        source = os.path.join(args.src, 'train', name) if name == 'Rain13K' else os.path.join(args.src, 'test', name)
        inputs, targets = (image_paths(os.path.join(source, kind)) for kind in ('input', 'target'))
        found[name] = pair_files(inputs, targets, f'{source}: input vs target', args.drop_unpaired)
        check_count(len(found[name]), name, source, args.expect)
    for name, pairs in found.items():
        out = os.path.join(args.out, 'train') if name == 'Rain13K' else os.path.join(args.out, 'test', name)
        link_pairs(pairs, [os.path.join(out, 'input'), os.path.join(out, 'target')], args.workers, name)


def main(argv=None):
    parser = make_parser(__doc__, pairs=True)
    parser.add_argument('--src', required=True, help='folder holding train/Rain13K and test/<set>')
    parser.add_argument('--out', default='datasets/Rain13K', help='output folder (default: %(default)s)')
    parser.add_argument('--sets', nargs='+', choices=SETS, default=list(SETS), help='default: all six')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
