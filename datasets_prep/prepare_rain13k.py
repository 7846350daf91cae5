"""Check and lay out the deraining sets: the Rain13K training pairs and the test sets Rain100H, Rain100L, Test100,
Test1200 and Test2800, as the MPRNet/Restormer/DRSformer download arranges them; optionally Rain1400, the DDN test set
(Fu et al., CVPR 2017), from its own archive.

Expects Restormer's deraining archives (train.zip and test.zip, Google Drive links in
https://github.com/swz30/Restormer/blob/main/Deraining/download_data.py) unpacked in --src:

    <src>/train/Rain13K/{input,target}/<name>     13,712 pairs (the download holds 13,711: swz30/MPRNet#74)
    <src>/test/<set>/{input,target}/<name>        Rain100H 100, Rain100L 100, Test100 100 (the download holds 98,
                                                  as MSPFN used: swz30/MPRNet#23), Test1200 1,200, Test2800 2,800

With --rain1400, the DDN test data (rainy_image.zip and ground_truth.zip of Fu et al.'s testing set, unpacked in
one folder; SLKD Tab. II-IV test on it):

    <rain1400>/rainy_image/<id>_<k>.jpg       1,400 rainy images: 14 rain types k = 1..14 of 100 scenes (ids 901-1000)
    <rain1400>/ground_truth/<id>.jpg          the 100 clean scenes

Each rainy image is paired with the clean image of its scene, which is written once per rainy image (a hard link).

Input and target images pair by file name, as BasicSR's PairedImageDataset reads them: images without a partner are
listed and stop the run (--drop-unpaired leaves them out instead). Every set is checked before anything is written.

Writes (hard links where the file system allows, else copies; a re-run writes only what is missing):

    <out>/train/{input,target}/<name>
    <out>/test/<set>/{input,target}/<name>
    <out>/test/Rain1400/{input,target}/<id>_<k>.jpg      with --rain1400

Example: python -m datasets_prep.prepare_rain13k --src downloads/Deraining/Datasets --out datasets/Rain13K \
    --rain1400 downloads/DDN/testing
"""
import os

from datasets_prep.common import check_count, image_paths, link_pairs, make_parser, pair_files, run

SETS = ('Rain13K', 'Rain100H', 'Rain100L', 'Test100', 'Test1200', 'Test2800')


def prepare(args):
    if args.sets and not args.src:
        raise ValueError(f'--src is needed for {args.sets} (or give --sets with no name and --rain1400)')
    found = {}
    for name in args.sets:
        source = os.path.join(args.src, 'train', name) if name == 'Rain13K' else os.path.join(args.src, 'test', name)
        inputs, targets = (image_paths(os.path.join(source, kind)) for kind in ('input', 'target'))
        found[name] = pair_files(inputs, targets, f'{source}: input vs target', args.drop_unpaired)
        check_count(len(found[name]), name, source, args.expect)
    if args.rain1400:
        found['Rain1400'] = rain1400_pairs(args.rain1400, args.drop_unpaired)
        check_count(len(found['Rain1400']), 'Rain1400', args.rain1400, args.expect)
    for name, pairs in found.items():
        out = os.path.join(args.out, 'train') if name == 'Rain13K' else os.path.join(args.out, 'test', name)
        link_pairs(pairs, [os.path.join(out, 'input'), os.path.join(out, 'target')], args.workers, name)


def rain1400_pairs(folder, drop_unpaired=False):
    """(name, rainy path, clean path) of the DDN test set: ``rainy_image/<id>_<k>.<ext>`` with the clean image of its
    scene, ``ground_truth/<id>.<ext>``."""
    rainy, clean = image_paths(os.path.join(folder, 'rainy_image')), image_paths(os.path.join(folder, 'ground_truth'))
    scenes = {os.path.splitext(name)[0]: path for name, path in clean.items()}
    pairs, lonely = [], []
    for name, path in sorted(rainy.items()):
        scene = os.path.splitext(name)[0].rsplit('_', 1)[0]
        if scene in scenes:
            pairs.append((name, path, scenes[scene]))
        else:
            lonely.append(name)
    if lonely and not drop_unpaired:
        raise ValueError(f'{folder}: rainy_image vs ground_truth: {len(lonely)} rainy images without a clean scene '
                         f'<id> for <id>_<k> {lonely[:5]} (--drop-unpaired leaves them out)')
    return pairs


def main(argv=None):
    parser = make_parser(__doc__, pairs=True)
    parser.add_argument('--src', help='folder holding train/Rain13K and test/<set> (needed unless --sets is empty)')
    parser.add_argument('--out', default='datasets/Rain13K', help='output folder (default: %(default)s)')
    parser.add_argument('--sets', nargs='*', choices=SETS, default=list(SETS),
                        help='default: all six; none (--sets with no name) with --rain1400 prepares Rain1400 only')
    parser.add_argument('--rain1400', help='folder holding rainy_image/ and ground_truth/ of the DDN test set '
                        '(prepares Rain1400 too)')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
