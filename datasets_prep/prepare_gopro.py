"""Lay out GoPro (GOPRO_Large) and the HIDE test set as BasicSR's paired folders; optionally cut GoPro's training
pairs into 512x512 crops.

Expects the official archives unpacked (GoPro: GOPRO_Large.zip from https://seungjunnah.github.io/Datasets/gopro;
HIDE: HIDE_dataset.zip from https://github.com/joanshen0508/HA_deblur):

    <gopro>/{train,test}/<sequence>/blur/<frame>.png     blurred frames (blur_gamma is not used)
    <gopro>/{train,test}/<sequence>/sharp/<frame>.png    sharp frames, same names: 2,103 train / 1,111 test pairs
    <hide>/test/test-close-ups/<name>.png
    <hide>/test/test-long-shot/<name>.png                2,025 blurred test images in all
    <hide>/GT/<name>.png                                 sharp images of the same names (it also holds training GT)

Every layout is checked before anything is written. Writes (hard links where the file system allows, else copies;
a re-run writes only what is missing):

    <out>/{train,test}/{input,target}/<sequence>_<frame>.png
    <out>/train/{input_crops,target_crops}/<sequence>_<frame>_s001.png ...    with --crops: 512x512 every 256
                                           pixels, the last flush with the edge (Restormer's generate_patches_gopro.py)
    <hide-out>/test/{input,target}/<name>.png

Example: python -m datasets_prep.prepare_gopro --gopro downloads/GOPRO_Large --hide downloads/HIDE_dataset --crops
"""
import os

from datasets_prep.common import check_count, cut_pairs, image_paths, link_pairs, make_parser, pair_files, run

HIDE_TEST_FOLDERS = ('test-close-ups', 'test-long-shot')


def gopro_pairs(root, split, drop_unpaired):
    """[(``<sequence>_<frame>.png``, blur path, sharp path)] of ``<root>/<split>``."""
    split_folder = os.path.join(root, split)
    if not os.path.isdir(split_folder):
        raise FileNotFoundError(f'{split_folder}: no such folder (expected GOPRO_Large/{split}/<sequence>/blur|sharp)')
    sequences = sorted(d for d in os.listdir(split_folder) if os.path.isdir(os.path.join(split_folder, d)))
    if not sequences:
        raise ValueError(f'{split_folder}: no sequence folders')
    frames = {'blur': {}, 'sharp': {}}
    for sequence in sequences:
        for kind, images in frames.items():
            folder = os.path.join(split_folder, sequence, kind)
            images.update({f'{sequence}_{name}': path for name, path in image_paths(folder).items()})
    return pair_files(frames['blur'], frames['sharp'], f'{split_folder}/<sequence>/blur vs sharp', drop_unpaired)


def hide_pairs(root, drop_unpaired):
    """[(name, blurred path, GT path)] of HIDE's test set."""
    blurred = {}
    for sub in HIDE_TEST_FOLDERS:
        images = image_paths(os.path.join(root, 'test', sub))
        if set(images) & set(blurred):
            raise ValueError(f'{os.path.join(root, "test")}: {sorted(set(images) & set(blurred))[:3]} appear in both '
                             f'{" and ".join(HIDE_TEST_FOLDERS)}')
        blurred.update(images)
    gt_folder = os.path.join(root, 'GT')
    return pair_files(blurred, image_paths(gt_folder), f'{os.path.join(root, "test")} vs {gt_folder}', drop_unpaired,
                      extra_targets=True)


def prepare(args):
    if not (args.gopro or args.hide):
        raise ValueError('nothing to do: give --gopro and/or --hide')
    found = []  # (description, pairs, output folder): every layout is checked before anything is written
    for split in ('train', 'test') if args.gopro else ():
        pairs = gopro_pairs(args.gopro, split, args.drop_unpaired)
        check_count(len(pairs), f'GoPro_{split}', os.path.join(args.gopro, split), args.expect)
        found.append((f'GoPro {split}', pairs, os.path.join(args.out, split)))
    if args.hide:
        pairs = hide_pairs(args.hide, args.drop_unpaired)
        check_count(len(pairs), 'HIDE', os.path.join(args.hide, 'test'), args.expect)
        found.append(('HIDE test', pairs, os.path.join(args.hide_out, 'test')))
    for desc, pairs, out in found:
        link_pairs(pairs, [os.path.join(out, 'input'), os.path.join(out, 'target')], args.workers, desc)
    if args.gopro and args.crops:
        folders = [os.path.join(args.out, 'train', kind) for kind in ('input_crops', 'target_crops')]
        cut_pairs(found[0][1], folders, args.crop_size, args.step, args.workers, 'GoPro train crops')


def main(argv=None):
    parser = make_parser(__doc__, pairs=True, crop=(512, 256))
    parser.add_argument('--gopro', help='the unpacked GOPRO_Large folder')
    parser.add_argument('--hide', help='the unpacked HIDE_dataset folder')
    parser.add_argument('--out', default='datasets/GoPro', help='GoPro output folder (default: %(default)s)')
    parser.add_argument('--hide-out', default='datasets/HIDE', help='HIDE output folder (default: %(default)s)')
    parser.add_argument('--crops', action='store_true', help='also cut the training pairs into crops')
    run(parser, prepare, argv)


if __name__ == '__main__':
    main()
